"""Request and response schemas: the API validates with these and the OpenAPI document is
generated from them."""

from __future__ import annotations

from apiflask import Schema
from apiflask.fields import Boolean, Dict, File, Float, Integer, List, Nested, String
from apiflask.validators import Length, OneOf, Range

from shared.engine import MAX_K

METRICS = ("cosine", "euclidean")
ROUTINGS = ("svm", "svm-fallback", "label", "none")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class ErrorDetail(Schema):
    code = String(required=True)
    message = String(required=True)


class ErrorOut(Schema):
    error = Nested(ErrorDetail, required=True)


class CatalogueIn(Schema):
    name = String(required=True, validate=Length(1, 200))
    root = String(load_default=None, validate=Length(1, 4096), metadata={"description": "a server-side folder"})
    default_metric = String(load_default="cosine", validate=OneOf(METRICS))
    default_k = Integer(load_default=10, validate=Range(1, MAX_K))


class CatalogueOut(Schema):
    id = Integer()
    name = String()
    root = String(allow_none=True)
    source_kind = String()
    default_metric = String()
    default_k = Integer()
    created_at = String()
    counts = Dict()
    active_model = Dict(allow_none=True)
    index_generation = Integer(allow_none=True)
    last_reindex = Dict(allow_none=True)
    next_reindex = String(allow_none=True)


class CatalogueList(Schema):
    catalogues = List(Nested(CatalogueOut))


class ItemOut(Schema):
    id = Integer()
    catalogue_id = Integer()
    key = String()
    sha256 = String(allow_none=True)
    category = String(allow_none=True)
    given_category = String(allow_none=True)
    predicted_category = String(allow_none=True)
    width = Integer(allow_none=True)
    height = Integer(allow_none=True)
    bytes = Integer(allow_none=True)
    status = String()
    bad_reason = String(allow_none=True)
    metadata = Dict(allow_none=True)
    image_url = String()
    first_seen = String()
    last_seen = String()


class ItemUploadIn(Schema):
    file = File(required=True)
    key = String(load_default=None, validate=Length(1, 500))
    category = String(load_default=None, validate=Length(1, 100))
    metadata = String(load_default=None, metadata={"description": "a JSON object"})


class ItemPathsIn(Schema):
    paths = List(String(validate=Length(1, 4096)), required=True, validate=Length(1, 10_000))
    category = String(load_default=None, validate=Length(1, 100))


class ItemsCreatedOut(Schema):
    items = List(Nested(ItemOut))
    job_id = Integer(allow_none=True)
    job_url = String(allow_none=True)
    duplicates = Integer()


class ItemsQuery(Schema):
    category = String(load_default=None)
    status = String(load_default=None, validate=OneOf(("active", "removed", "bad")))
    cursor = Integer(load_default=None, validate=Range(0))
    limit = Integer(load_default=50, validate=Range(1, 500))


class ItemPage(Schema):
    items = List(Nested(ItemOut))
    next_cursor = Integer(allow_none=True)


class QueryParams(Schema):
    catalogue = String(required=True, metadata={"description": "catalogue id or name"})
    k = Integer(load_default=10, validate=Range(1, MAX_K))
    metric = String(load_default="cosine", validate=OneOf(METRICS))
    routing = String(load_default="svm-fallback", validate=OneOf(ROUTINGS))
    category = String(load_default=None, validate=Length(1, 100))
    threshold = Float(load_default=None, validate=Range(0.0, 1.0))


class QueryFormIn(QueryParams):
    file = File(required=True)


class QueryJsonIn(QueryParams):
    item_id = Integer(required=True, validate=Range(1))


class JobAccepted(Schema):
    job_id = Integer()


class ReindexIn(Schema):
    full = Boolean(load_default=False)


class Hit(Schema):
    rank = Integer()
    item_id = Integer()
    key = String()
    score = Float()
    category = String(allow_none=True)
    image_url = String()


class JobOut(Schema):
    id = Integer()
    type = String()
    status = String()
    catalogue_id = Integer(allow_none=True)
    progress = Dict()
    params = Dict(allow_none=True)
    error = Dict(allow_none=True)
    created_at = String()
    started_at = String(allow_none=True)
    finished_at = String(allow_none=True)
    result = Dict(allow_none=True)
    results = List(Nested(Hit), allow_none=True)
    routing = Dict(allow_none=True)
    model_version = Dict(allow_none=True)
    results_url = String(allow_none=True)
    elapsed_ms = Float(allow_none=True)


class JobsQuery(Schema):
    status = String(load_default=None, validate=OneOf(JOB_STATUSES))
    type = String(load_default=None, validate=Length(1, 32))
    catalogue_id = Integer(load_default=None)
    cursor = Integer(load_default=None, validate=Range(1))
    limit = Integer(load_default=50, validate=Range(1, 200))


class JobList(Schema):
    jobs = List(Nested(JobOut))
    next_cursor = Integer(allow_none=True)


class ResultsQuery(Schema):
    offset = Integer(load_default=0, validate=Range(0))
    limit = Integer(load_default=100, validate=Range(1, 1000))


class ResultPage(Schema):
    job_id = Integer()
    total = Integer()
    offset = Integer()
    results = List(Nested(Hit))
    next_offset = Integer(allow_none=True)


class Health(Schema):
    status = String()
    checks = Dict()
