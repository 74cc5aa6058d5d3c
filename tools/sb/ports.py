"""Every TCP port the launcher uses, derived from one base table plus an offset.

Nothing else in tools/sb hard-codes a port number: ask a `Ports` object.

    offset 0     (./sb up):                     Kafka 19092, Redis 17000-17005, MariaDB 13306-13309,
                                                nginx 18080/18081, edges 18100+ (internal 18150+),
                                                workers 18200+, router 18250, Prometheus 18300,
                                                Jaeger 18310 (OTLP), 18311 (UI), 18312
    offset 1000  (./sb test, --port-offset 1000): Kafka 20092, Redis 18000-18005, MariaDB 14306-14309,
                                                nginx 19080/19081, edges 19100+ (internal 19150+),
                                                workers 19200+, router 19250, Prometheus 19300,
                                                Jaeger 19310-19312
"""

from __future__ import annotations

import os

# The base table. Values are the ports used with --port-offset 0.
BASE = {
    # Kafka: broker i (0-based) listens on kafka_client + 2*i, its controller on kafka_controller + 2*i.
    "kafka_client": 19092,
    "kafka_controller": 19093,
    "kafka_stride": 2,  # not a port: distance between consecutive brokers
    # Redis Cluster: nodes on redis_first .. redis_first+5; cluster bus = port + redis_bus_shift.
    "redis_first": 17000,
    "redis_bus_shift": 10000,  # not a port: Redis' own default bus offset, kept explicit
    # MariaDB: shard s primary on mariadb_first + 2*s, its replica on mariadb_first + 2*s + 1.
    "mariadb_first": 13306,
    # Galera (`--shard-replication galera`): node n of shard s (n 0: the primary's instance, 1: the
    # replica's) talks to its cluster on galera_first + 10*s + 3*n, receives incremental state
    # transfers on the next port and full ones (SST) on the one after; the shard's arbitrator
    # (garbd) on galera_first + 10*s + 6.
    "galera_first": 13320,
    # nginx instance i on nginx_first + i.
    "nginx_first": 18080,
    # edge-i listens on edge_first + i (HTTP + WebSocket + /healthz) ...
    "edge_first": 18100,
    # ... and serves /metrics (and /healthz) to operators on edge_internal_first + i.
    "edge_internal_first": 18150,
    # worker role k (order of WORKERS), process j of that role (`--workers`): health endpoint on
    # worker_health_first + k + j * len(WORKERS), so process 0 of each role keeps 18200..18204.
    "worker_health_first": 18200,
    # router health endpoint.
    "router_health": 18250,
    # Prometheus (tools/sb/prometheus.py), scraping the processes above.
    "prometheus": 18300,
    # Jaeger (tools/sb/jaeger.py): the OTLP/HTTP receiver the processes export spans to, the
    # query API and UI, and the query's gRPC listener.
    "jaeger_otlp": 18310,
    "jaeger_query": 18311,
    "jaeger_query_grpc": 18312,
}

# Stride / shift entries are not offset.
_NOT_PORTS = {"kafka_stride", "redis_bus_shift"}

REDIS_NODES = 6
MARIADB_SHARDS = 2
NGINX_INSTANCES = 2
MAX_EDGES = 50  # keeps edge ports below the internal range, internal ones below the workers'


def _roles() -> list[str]:
    """The worker roles, from roles.txt (kept equal to the Rust code's list by a workers test)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "roles.txt")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


WORKERS = _roles()
# processes per worker role (`--workers`): their health ports stay below the router's
MAX_WORKERS_PER_ROLE = (BASE["router_health"] - BASE["worker_health_first"]) // len(WORKERS)


class Ports:
    def __init__(self, offset: int = 0):
        if offset < 0 or offset > 40000:
            raise ValueError(f"port offset {offset} out of range (0..40000)")
        self.offset = offset
        self._p = {k: (v if k in _NOT_PORTS else v + offset) for k, v in BASE.items()}

    # --- Kafka -----------------------------------------------------------
    def kafka_client(self, i: int) -> int:
        return self._p["kafka_client"] + self._p["kafka_stride"] * i

    def kafka_controller(self, i: int) -> int:
        return self._p["kafka_controller"] + self._p["kafka_stride"] * i

    # --- Redis -----------------------------------------------------------
    def redis(self, i: int) -> int:
        return self._p["redis_first"] + i

    def redis_bus(self, i: int) -> int:
        return self.redis(i) + self._p["redis_bus_shift"]

    # --- MariaDB ---------------------------------------------------------
    def mariadb(self, shard: int, replica: bool) -> int:
        return self._p["mariadb_first"] + 2 * shard + (1 if replica else 0)

    def galera(self, shard: int, node: int) -> int:
        """Node `node`'s group communication port (its IST port is the next, its SST port the one
        after); node 2 is the shard's arbitrator."""
        return self._p["galera_first"] + 10 * shard + 3 * node

    # --- nginx / app -----------------------------------------------------
    def nginx(self, i: int) -> int:
        return self._p["nginx_first"] + i

    def edge(self, i: int) -> int:
        return self._p["edge_first"] + i

    def edge_internal(self, i: int) -> int:
        return self._p["edge_internal_first"] + i

    def worker_health(self, worker: str, instance: int = 0) -> int:
        if not 0 <= instance < MAX_WORKERS_PER_ROLE:
            raise ValueError(f"worker process {instance} of {worker} out of range (0..{MAX_WORKERS_PER_ROLE - 1})")
        return self._p["worker_health_first"] + WORKERS.index(worker) + instance * len(WORKERS)

    def router_health(self) -> int:
        return self._p["router_health"]

    def prometheus(self) -> int:
        return self._p["prometheus"]

    def jaeger_otlp(self) -> int:
        return self._p["jaeger_otlp"]

    def jaeger_query(self) -> int:
        return self._p["jaeger_query"]

    def jaeger_query_grpc(self) -> int:
        return self._p["jaeger_query_grpc"]

    # --- everything, for pre-flight "is this port free" checks -----------
    def all_listening(self, kafka_brokers: int, edges: int, apps: bool,
                      workers: dict[str, int] | None = None, galera: bool = False) -> dict[str, list[int]]:
        """Component group -> every port that group will listen on (`workers`: processes per
        role, default one each; `galera`: the shards are Galera clusters)."""
        out = {
            "kafka": [p for i in range(kafka_brokers) for p in (self.kafka_client(i), self.kafka_controller(i))],
            "redis": [p for i in range(REDIS_NODES) for p in (self.redis(i), self.redis_bus(i))],
            "mariadb": [self.mariadb(s, r) for s in range(MARIADB_SHARDS) for r in (False, True)],
            "nginx": [self.nginx(i) for i in range(NGINX_INSTANCES)],
        }
        if galera:
            out["mariadb"] += [self.galera(s, n) + k for s in range(MARIADB_SHARDS) for n in (0, 1)
                               for k in range(3)] + [self.galera(s, 2) for s in range(MARIADB_SHARDS)]
        if apps:
            out["edges"] = [self.edge(i) for i in range(edges)] + [self.edge_internal(i) for i in range(edges)]
            out["workers"] = [self.worker_health(w, j) for w in WORKERS for j in range((workers or {}).get(w, 1))]
            out["workers"].append(self.router_health())
            out["prometheus"] = [self.prometheus()]
            out["jaeger"] = [self.jaeger_otlp(), self.jaeger_query(), self.jaeger_query_grpc()]
        return out


def addr(port: int) -> str:
    return f"127.0.0.1:{port}"
