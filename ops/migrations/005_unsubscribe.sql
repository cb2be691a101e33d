-- 005_unsubscribe: a recipient who unsubscribes through a message's
-- List-Unsubscribe link or address gets an 'unsubscribed' event on that
-- message (core/unsub_token.c writes it with the contact's new status).
ALTER TABLE message_events DROP CONSTRAINT message_events_type_check;
ALTER TABLE message_events ADD CONSTRAINT message_events_type_check
    CHECK (type IN ('accepted', 'scheduled', 'suppressed', 'attempt', 'sent', 'deferred',
                    'bounced', 'failed', 'canceled', 'complaint', 'unsubscribed'));
