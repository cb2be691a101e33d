-- 010_outbox_writes: two things every message paid for and nothing needed.
-- messages_send (send_id): no query looks a send up without its
-- organization, and messages_send_recipient (organization_id, send_id, ...)
-- serves those; each row's insert and each of its two status updates (not
-- HOT: status is indexed) wrote an entry into it.
-- message_events' foreign key to organizations: its message_id key already
-- ties every event to a message of an existing organization (both cascade
-- on delete); the check was one more lookup per event row, two per message.
DROP INDEX IF EXISTS messages_send;
ALTER TABLE message_events DROP CONSTRAINT IF EXISTS message_events_organization_id_fkey;
