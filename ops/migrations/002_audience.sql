-- 002_audience: domains, the audience (contacts, lists, tags, segments,
-- suppressions), templates, webhooks, the trigger outbox (events), and
-- idempotency records. Every tenant-owned table carries organization_id and
-- an index that starts with it; every query filters by it.

CREATE TABLE domains (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name text NOT NULL,                        -- lower-case, no trailing dot
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'verified', 'failed')),
    return_path text NOT NULL,                 -- host that receives bounces (VERP)
    dkim_ed25519_selector text NOT NULL,
    dkim_ed25519_public text NOT NULL,         -- base64 of the raw 32-byte key
    dkim_ed25519_private bytea NOT NULL,       -- encrypted at rest (AES-256-GCM)
    dkim_rsa_selector text NOT NULL,
    dkim_rsa_public text NOT NULL,             -- base64 SubjectPublicKeyInfo (DER)
    dkim_rsa_private bytea NOT NULL,           -- encrypted at rest (AES-256-GCM)
    checks jsonb NOT NULL DEFAULT '{}',        -- per-record verification status and reason
    verified_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX domains_org_name ON domains (organization_id, name);

CREATE TABLE contacts (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    email text NOT NULL,                       -- normalized: trimmed, domain lower-cased
    status text NOT NULL DEFAULT 'subscribed'
        CHECK (status IN ('subscribed', 'unsubscribed', 'bounced', 'complained')),
    fields jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(fields) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX contacts_org_email ON contacts (organization_id, lower(email));
CREATE INDEX contacts_org_created ON contacts (organization_id, created_at, id);
CREATE INDEX contacts_org_email_prefix ON contacts (organization_id, lower(email) text_pattern_ops);
CREATE INDEX contacts_org_status ON contacts (organization_id, status);

CREATE TABLE lists (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name text NOT NULL,
    description text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX lists_org_name ON lists (organization_id, name);

CREATE TABLE list_members (
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    list_id uuid NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    contact_id uuid NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (list_id, contact_id)
);
CREATE INDEX list_members_org_contact ON list_members (organization_id, contact_id);

CREATE TABLE tags (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX tags_org_name ON tags (organization_id, name);

CREATE TABLE contact_tags (
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    contact_id uuid NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    tag_id uuid NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (contact_id, tag_id)
);
CREATE INDEX contact_tags_org_tag ON contact_tags (organization_id, tag_id);

CREATE TABLE segments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name text NOT NULL,
    rule jsonb NOT NULL,                       -- core/rule.h language, validated on save
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX segments_org_name ON segments (organization_id, name);

CREATE TABLE suppressions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    email text NOT NULL,
    reason text NOT NULL CHECK (reason IN ('bounce', 'complaint', 'unsubscribe', 'manual')),
    expires_at timestamptz,                    -- NULL: never
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX suppressions_org_email ON suppressions (organization_id, lower(email));

CREATE TABLE templates (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name text NOT NULL,
    strict boolean NOT NULL DEFAULT false,     -- missing variables refuse the render
    current_version int NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX templates_org_name ON templates (organization_id, name);

CREATE TABLE template_versions (
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    template_id uuid NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    version int NOT NULL,
    subject text NOT NULL DEFAULT '',
    html text NOT NULL DEFAULT '',
    text text NOT NULL DEFAULT '',
    created_by text,                           -- "user:<id>" or "api_key:<id>"
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version)
);
CREATE INDEX template_versions_org ON template_versions (organization_id, template_id);

CREATE TABLE webhooks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    url text NOT NULL,
    events text[] NOT NULL,
    secret text NOT NULL,                      -- signing secret, shown on create
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_org ON webhooks (organization_id, created_at, id);

-- The trigger outbox: a row first, then a message to tenant/<org>. The
-- sweeper re-drives rows whose dispatched_at stays NULL.
CREATE TABLE events (
    id bigserial PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name text NOT NULL,                        -- list_added, tag_added, subscribed, event
    contact_id uuid REFERENCES contacts(id) ON DELETE SET NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz
);
CREATE INDEX events_org_created ON events (organization_id, created_at);
CREATE INDEX events_undispatched ON events (created_at) WHERE dispatched_at IS NULL;

CREATE TABLE idempotency_keys (
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    key text NOT NULL,
    route text NOT NULL,
    request_hash text NOT NULL,                -- sha256 of method, path and body
    status int NOT NULL,
    response text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
