-- 006_message_contents: the bodies of a send, stored once per send rather
-- than on every recipient's row. A bulk send to 100,000 contacts used to
-- write (and TOAST-compress) the same html and text 100,000 times; now it
-- writes them once, and mailers read them once per send. messages.html and
-- messages.text stay for rows written before this migration (readers take
-- the content row first, then those columns).
CREATE TABLE message_contents (
    send_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    html text,
    text text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_contents_org ON message_contents (organization_id);
