"""Request and response schemas: the API validates with these and the OpenAPI document is
generated from them."""

from __future__ import annotations

from apiflask import Schema
from apiflask.fields import AwareDateTime, Boolean, Dict, File, Float, Integer, List, Nested, String
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
    duplicate_threshold = Float(load_default=None, validate=Range(0.0, 1.0, min_inclusive=False),
                                metadata={"description": "flag results with cosine >= this as duplicates "
                                                         "(`is_duplicate`); cosine metric only"})
    wait = Float(load_default=0.0, validate=Range(0.0, 60.0), metadata={
        "description": "Answer in one request: hold the response until the query has finished, at most "
                       "this many seconds (capped by FIR_API_MAX_WAIT_S, default 20). Finished in time: "
                       "200 with the job as GET /jobs/<id> gives it (results included) and `job_id`; "
                       "else 202 as without `wait`. 0 (default): 202 at once."})


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
    is_duplicate = Boolean(metadata={"description": "only for queries with a duplicate_threshold"})


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
    batch = List(Dict(), allow_none=True, metadata={"description": "the batch form: one entry per file"})
    duplicate = Dict(allow_none=True)


class JobAnswered(JobOut):
    """A query submitted with ``wait`` that finished in time: the job, and its id again as in 202."""

    job_id = Integer()


class JobWaitQuery(Schema):
    wait = Float(load_default=0.0, validate=Range(0.0, 60.0), metadata={
        "description": "Long polling: answer as soon as the job has finished, or after this many seconds "
                       "(at most the server's FIR_API_MAX_WAIT_S, default 20), whichever comes first. "
                       "0 (default): answer at once."})


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


# -- de-duplication ---------------------------------------------------------------------------
DEDUP_DECISIONS = ("confirmed", "not_duplicate", "keep_item")
KEEP_RULES = ("oldest", "largest", "most_complete")
CosineThreshold = Range(0.0, 1.0, min_inclusive=False)


class DedupIn(Schema):
    category = String(load_default=None, validate=Length(1, 200),
                      metadata={"description": "only this category (default: every category)"})
    only_new = Boolean(load_default=False, metadata={
        "description": "only items new or changed since `since` (default: the previous run) against the rest"})
    since = AwareDateTime(load_default=None)
    threshold = Float(load_default=None, validate=CosineThreshold,
                      metadata={"description": "cosine similarity from which two items are near-duplicates"})
    thresholds = Dict(keys=String(validate=Length(1, 200)), values=Float(validate=CosineThreshold),
                      load_default=None, metadata={"description": "a threshold per category (`fir dedup calibrate`)"})
    use_phash = Boolean(load_default=False, metadata={
        "description": "near pairs must also be close by perceptual hash"})
    phash_max_distance = Integer(load_default=16, validate=Range(0, 64))
    keep_rule = String(load_default="oldest", validate=OneOf(KEEP_RULES))


class DedupRunsQuery(Schema):
    cursor = Integer(load_default=None, validate=Range(1))
    limit = Integer(load_default=20, validate=Range(1, 200))


class DedupRunOut(Schema):
    id = Integer()
    catalogue_id = Integer()
    model_version_id = Integer(allow_none=True)
    job_id = Integer(allow_none=True)
    params = Dict(allow_none=True)
    group_count = Integer()
    counts = Dict()
    created_at = String()
    finished_at = String(allow_none=True)
    groups_url = String()
    export_url = String()


class DedupRunList(Schema):
    runs = List(Nested(DedupRunOut))
    next_cursor = Integer(allow_none=True)


class DedupGroupsQuery(Schema):
    cursor = Integer(load_default=None, validate=Range(0), metadata={"description": "the last group id seen"})
    limit = Integer(load_default=50, validate=Range(1, 500))
    include_dismissed = Boolean(load_default=False)
    kind = String(load_default=None, validate=OneOf(("exact", "near")))
    only_new = Boolean(load_default=False, metadata={"description": "only groups new since the previous run"})


class DedupMemberOut(Schema):
    item_id = Integer()
    key = String(allow_none=True)
    category = String(allow_none=True)
    width = Integer(allow_none=True)
    height = Integer(allow_none=True)
    hash_equal = Boolean()
    phash_distance = Integer(allow_none=True)
    cosine = Float(allow_none=True)
    is_representative = Boolean()
    image_url = String()


class DedupDecisionOut(Schema):
    group_id = Integer(allow_none=True)
    fingerprint = String()
    decision = String()
    kept_item_id = Integer(allow_none=True)
    decided_by = String()
    note = String(allow_none=True)
    decided_at = String()


class DedupGroupOut(Schema):
    id = Integer()
    run_id = Integer()
    kind = String()
    category = String(allow_none=True)
    size = Integer()
    fingerprint = String()
    representative_item_id = Integer()
    suggested_keep_item_id = Integer()
    new_since_previous = Boolean()
    dismissed = Boolean()
    decision = Nested(DedupDecisionOut, allow_none=True)
    members = List(Nested(DedupMemberOut))


class DedupGroupPage(Schema):
    run_id = Integer()
    groups = List(Nested(DedupGroupOut))
    next_cursor = Integer(allow_none=True)


class DedupExportQuery(Schema):
    format = String(load_default="json", validate=OneOf(("csv", "json")))
    include_dismissed = Boolean(load_default=False)


class DedupDecisionIn(Schema):
    decision = String(required=True, validate=OneOf(DEDUP_DECISIONS))
    item_id = Integer(load_default=None, validate=Range(1), metadata={"description": "keep_item: the item to keep"})
    decided_by = String(load_default="api", validate=Length(1, 200))
    note = String(load_default=None, validate=Length(0, 2000))


class CheckDuplicateIn(Schema):
    file = File(required=True)
    threshold = Float(load_default=None, validate=CosineThreshold,
                      metadata={"description": "cosine from which a match is a duplicate (default: dedup's)"})
    category = String(load_default=None, validate=Length(1, 200),
                      metadata={"description": "search only this category (default: the whole catalogue)"})
    k = Integer(load_default=10, validate=Range(1, 100))
