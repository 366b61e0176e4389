# One image for the API, the workers and beat; the command picks the role.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# torch first, pinned: the CUDA build serves GPU workers and runs on CPU workers too.
RUN pip install "torch==2.14.1" "torchvision==0.29.1"
COPY pyproject.toml README.md alembic.ini ./
COPY shared ./shared
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
RUN pip install ".[postgres,ann]" "torch==2.14.1" "torchvision==0.29.1"
RUN useradd --create-home fir && mkdir -p /data && chown fir /data
USER fir
ENV FIR_HOME=/data
EXPOSE 8000
CMD ["gunicorn", "-c", "python:api.gunicorn_conf", "-w", "2", "-b", "0.0.0.0:8000", "api.wsgi:app"]
