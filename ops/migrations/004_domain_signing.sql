-- 004_domain_signing: which DKIM signatures a domain's mail carries. Both
-- keys are always made and published; 'ed25519' skips the RSA signature
-- (about 0.26 ms of CPU per message) for senders whose receivers all verify
-- Ed25519 (RFC 8463). The default signs with both.
ALTER TABLE domains ADD COLUMN signing text NOT NULL DEFAULT 'both'
    CHECK (signing IN ('both', 'ed25519'));
