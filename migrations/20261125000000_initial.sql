-- Routing audit, per-pod samples and release history of the dashboard.

-- One row per routing decision shipped by a gateway (DESIGN.md §5). The columns the audit filters on are columns;
-- the candidates (metrics and per-scorer values) are kept as the JSON the gateway sent.
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    model TEXT NOT NULL,
    target_model TEXT NOT NULL,
    pool TEXT NOT NULL,
    criticality TEXT NOT NULL,
    outcome TEXT NOT NULL,
    endpoint TEXT,
    pod TEXT,
    profile TEXT NOT NULL,
    reason TEXT NOT NULL,
    scheduler_micros INTEGER NOT NULL,
    status INTEGER,
    ttft_ms REAL,
    duration_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cached_tokens INTEGER,
    fallbacks TEXT NOT NULL,
    candidates TEXT NOT NULL
);

-- Pages are ordered newest first by (received_at_ms, id) and paginated by keyset on that pair; each filter column
-- has an index whose implicit rowid suffix makes it (column, received_at_ms, id), so a filtered page is an index
-- range scan whatever the table size.
CREATE INDEX decisions_by_time ON decisions (received_at_ms);
CREATE INDEX decisions_by_model ON decisions (model, received_at_ms);
CREATE INDEX decisions_by_target ON decisions (target_model, received_at_ms);
CREATE INDEX decisions_by_pod ON decisions (pod, received_at_ms);
CREATE INDEX decisions_by_outcome ON decisions (outcome, received_at_ms);
CREATE INDEX decisions_by_request ON decisions (request_id);

-- Queue, running requests and KV-cache use of each pod, one row per pod and second.
CREATE TABLE pod_samples (
    pod TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    queue INTEGER NOT NULL,
    running INTEGER NOT NULL,
    kv_usage REAL NOT NULL,
    PRIMARY KEY (pod, at_ms)
) WITHOUT ROWID;
CREATE INDEX pod_samples_by_time ON pod_samples (at_ms);

-- The latest sample of every pod, so the overview never scans the history.
CREATE TABLE pods (
    pod TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    queue INTEGER NOT NULL,
    running INTEGER NOT NULL,
    kv_usage REAL NOT NULL
) WITHOUT ROWID;

-- Every change of an InferenceModel's targetModels made through the dashboard; before/after are JSON arrays of
-- {"name", "weight"}.
CREATE TABLE releases (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    model_name TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    before TEXT NOT NULL,
    after TEXT NOT NULL
);
CREATE INDEX releases_by_model ON releases (namespace, name, id);
