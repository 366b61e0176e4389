"""Vector index over per-category shards, routing plans and top-k search."""

from shared.search.index import Metric, SearchResult, ShardedIndex
from shared.search.routing import RoutingMode, plan_routes

__all__ = ["Metric", "RoutingMode", "SearchResult", "ShardedIndex", "plan_routes"]
