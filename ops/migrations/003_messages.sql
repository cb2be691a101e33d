-- 003_messages: the outbox. POST /messages writes these rows (and nothing
-- else announces a message before they are committed); mailer actors
-- (mailer/<recipient_domain>) lease and deliver them.
--
-- One row per envelope recipient. A message to three people is three rows
-- sharing a send_id: delivery, retries and outcomes are per recipient, and
-- each mailer actor owns the rows of its recipient domain. Header visibility
-- is kept apart from the envelope: every row of a send carries the same
-- To (to_addrs) and Cc (cc_addrs) header lists, so every copy shows the
-- same headers; a Bcc recipient gets a row (recipient_type 'bcc') but is
-- never written into any header.
--
-- Templated sends are rendered when the API accepts them: subject, html and
-- text hold exactly what will be sent, and template_id, template_version and
-- variables say where it came from. A later template edit never changes a
-- queued message.
--
-- Attachments belong to the send (one copy, not one per recipient):
-- message_attachments rows keyed by (send_id, idx).

CREATE TABLE batches (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('list', 'segment')),
    target_id uuid NOT NULL,                   -- the list or segment (it may be deleted later)
    total int NOT NULL DEFAULT 0,              -- recipients (rows) written, suppressed included
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batches_org_created ON batches (organization_id, created_at, id);

CREATE TABLE messages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    send_id uuid NOT NULL,                     -- one API call (or one bulk send)
    batch_id uuid REFERENCES batches(id) ON DELETE SET NULL,
    contact_id uuid REFERENCES contacts(id) ON DELETE SET NULL, -- bulk sends: the member
    status text NOT NULL CHECK (status IN ('scheduled', 'queued', 'sending', 'sent', 'deferred',
                                           'bounced', 'failed', 'suppressed', 'canceled')),
    from_addr text NOT NULL,
    from_name text,                            -- display name, no CR/LF (checked by the API)
    reply_to text[] NOT NULL DEFAULT '{}',
    recipient text NOT NULL,                   -- the envelope recipient (RCPT TO)
    recipient_domain text NOT NULL,            -- lower-case: the mailer actor's key
    recipient_type text NOT NULL DEFAULT 'to' CHECK (recipient_type IN ('to', 'cc', 'bcc')),
    to_addrs text[] NOT NULL DEFAULT '{}',     -- the To header, same on every row of a send
    cc_addrs text[] NOT NULL DEFAULT '{}',     -- the Cc header, same on every row of a send
    subject text NOT NULL DEFAULT '',
    html text,
    text text,
    template_id uuid REFERENCES templates(id) ON DELETE SET NULL,
    template_version int,
    variables jsonb,
    headers jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    tags text[] NOT NULL DEFAULT '{}',
    metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    size_bytes bigint NOT NULL DEFAULT 0,      -- subject + bodies + headers + decoded attachments
    send_at timestamptz,                       -- NULL: as soon as possible
    attempts int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz,                   -- a mailer holds the row until then
    last_response text,                        -- last SMTP reply or connection error
    message_id text NOT NULL,                  -- RFC 5322 Message-ID, with the angle brackets
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Idempotency of a send: one row per recipient, whatever its letter case.
CREATE UNIQUE INDEX messages_send_recipient ON messages (organization_id, send_id, lower(recipient));
-- The mailer's queue scan: due rows of one destination.
CREATE INDEX messages_queue ON messages (recipient_domain, next_attempt_at)
    WHERE status IN ('queued', 'deferred');
-- The scheduler's scan: scheduled rows whose send_at has come.
CREATE INDEX messages_scheduled ON messages (send_at) WHERE status = 'scheduled';
CREATE INDEX messages_org_created ON messages (organization_id, created_at, id);
CREATE INDEX messages_batch ON messages (batch_id, status) WHERE batch_id IS NOT NULL;
CREATE INDEX messages_send ON messages (send_id);

CREATE TABLE message_attachments (
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    send_id uuid NOT NULL,
    idx int NOT NULL,                          -- order in the request, from 0
    filename text NOT NULL,
    content_type text NOT NULL,
    content_id text,                           -- set: an inline part referenced as cid:<content_id>
    data bytea NOT NULL,
    PRIMARY KEY (send_id, idx)
);
CREATE INDEX message_attachments_org ON message_attachments (organization_id);

CREATE TABLE message_events (
    id bigserial PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    message_id uuid NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    type text NOT NULL CHECK (type IN ('accepted', 'scheduled', 'suppressed', 'attempt', 'sent',
                                       'deferred', 'bounced', 'failed', 'canceled', 'complaint')),
    detail jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_events_message ON message_events (message_id, id);
CREATE INDEX message_events_org_created ON message_events (organization_id, created_at);
