"""What every benchmark prints first: the machine, the date and the command."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys


def machine_header(title: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    lines = [
        f"# {title}",
        "",
        f"- date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}",
        f"- python {platform.python_version()}",
        f"- command: {' '.join([os.path.basename(sys.executable), *sys.argv])}",
    ]
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        lines.append(f"- torch {torch.__version__}, threads {torch.get_num_threads()}, GPU: {gpu}")
    except ImportError:
        pass
    return "\n".join(lines) + "\n"
