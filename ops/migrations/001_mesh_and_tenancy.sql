-- 001 mesh and tenancy: who the tenants are, who may act for them, what
-- they did, and the tables the actor mesh itself needs (live nodes, actor
-- state, durable timers).
--
-- Runs inside one transaction applied by `postchi migrate`: no BEGIN/COMMIT
-- here. No extensions are needed: gen_random_uuid() is core since
-- PostgreSQL 13, and case-insensitive e-mail uniqueness is a unique index on
-- lower(email) rather than citext.
--
-- Every tenant-owned table carries organization_id (deleting an
-- organization deletes what it owns) and an index that starts with it,
-- because every tenant query filters by it.

CREATE TABLE organizations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    slug        text UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email           text NOT NULL,
    password_hash   text NOT NULL,
    role            text NOT NULL DEFAULT 'owner'
                    CHECK (role IN ('owner', 'admin', 'member')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_login_at   timestamptz
);
-- Login is by e-mail alone, so an address belongs to one user across all
-- organizations, whatever its letter case.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_organization_idx ON users (organization_id, created_at);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name            text NOT NULL,
    -- The visible start of the key, shown in listings and used to find the
    -- row; the secret itself is stored only as a hash.
    prefix          text NOT NULL UNIQUE,
    secret_hash     text NOT NULL,
    scope           text NOT NULL CHECK (scope IN ('full', 'send', 'read')),
    created_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz
);
CREATE INDEX api_keys_organization_idx ON api_keys (organization_id, created_at);

CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    actor_type      text CHECK (actor_type IN ('user', 'api_key', 'system')),
    actor_id        text,
    action          text NOT NULL,
    resource_type   text,
    resource_id     text,
    detail          jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_organization_idx ON audit_log (organization_id, created_at DESC);

-- Processes of the mesh (broker, workers, api nodes) as last seen; a row
-- whose last_seen_at is old is a node that went away.
CREATE TABLE mesh_nodes (
    node_id      text PRIMARY KEY,
    role         text NOT NULL,
    capacity     int,
    endpoint     text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);

-- Durable state of virtual actors, addressed kind/key. Not tenant-owned as
-- such (a mailer actor serves a recipient domain for every tenant). Two
-- activations of one actor can briefly coexist, so a transition is written
-- as UPDATE ... SET version = version + 1 WHERE kind = $1 AND key = $2 AND
-- version = <the version it read>: a stale activation updates no row.
CREATE TABLE actor_state (
    kind       text NOT NULL,
    key        text NOT NULL,
    version    bigint NOT NULL DEFAULT 0,
    state      jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, key)
);

-- Durable timers: a message (body) to deliver to an actor address (target)
-- at due_at. The sweeper leases due rows (lease_until) so one process fires
-- each; a lease that expires means the process died and the timer fires
-- again. (target, name) is unique so re-arming a timer after a crash
-- replaces it instead of adding a second one.
CREATE TABLE timers (
    id              bigserial PRIMARY KEY,
    organization_id uuid REFERENCES organizations (id) ON DELETE CASCADE,
    target          text NOT NULL,
    name            text NOT NULL,
    body            bytea,
    due_at          timestamptz NOT NULL,
    lease_until     timestamptz,
    attempts        int NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (target, name)
);
CREATE INDEX timers_due_idx ON timers (due_at);
CREATE INDEX timers_organization_idx ON timers (organization_id)
    WHERE organization_id IS NOT NULL;
