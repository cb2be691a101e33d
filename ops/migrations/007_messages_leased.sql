-- 007_messages_leased: the sweeper looks every two seconds for rows whose
-- lease ran out (status 'sending', lease_until past). Without an index that
-- is a scan of the whole outbox, which grows with every message ever sent;
-- this partial index holds only the rows being sent.
CREATE INDEX messages_leased ON messages (lease_until) WHERE status = 'sending';
