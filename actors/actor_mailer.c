/*
 * actor_mailer - kind "mailer", key = recipient domain: turns committed
 * outbox rows for that domain into signed messages for the delivery engine.
 *
 *   deliver {"message_id": id}   one row (the send API's wake-up)
 *   wake    {...}                every due row of the domain (bulk sends,
 *                                the sweeper's re-drive)
 *
 * A row is claimed with one UPDATE that only succeeds while it is queued or
 * deferred and due: it becomes 'sending' with a lease (delivery_lease_s),
 * so two activations of this actor, or a replayed message, never send it
 * twice; a worker that dies mid-send leaves a lease that runs out and the
 * sweeper re-drives the row. The message is built (MIME) and signed
 * (DKIM, every key of the sending domain, once) here, on the pool thread,
 * then handed to the delivery engine, which records the outcome.
 *
 * Routing: smtp_relay when set (the dev stack's capture sink, or a
 * smarthost), else the domain's MX hosts (core/mx.c, c-ares).
 *
 * Shaping key (the MX rollup): "relay:<host:port>" through the relay; else
 * the shaping_overrides suffix matching the first MX host's name (the
 * longest one, on a label boundary: "google.com" matches
 * "aspmx.l.google.com"), so every domain a provider hosts shares that
 * provider's budget; else the MX host name itself. The budget is the
 * override's rate/burst or shaping_rate/shaping_burst.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "actor.h"
#include "config.h"
#include "delivery.h"
#include "dkim_sign.h"
#include "log.h"
#include "mailer_shard.h"
#include "metrics.h"
#include "mime.h"
#include "mx.h"
#include "secretbox.h"
#include "shape_override.h"
#include "unsub_token.h"
#include "verp.h"


static struct {
    unsigned char key[SECRETBOX_KEY_LEN]; /* opens DKIM private keys */
    int have_key;                         /* secret_key was valid */
    char relay_host[256];                 /* smtp_relay host, "" for MX */
    int relay_port;                       /* its port */
    int mx_port;                          /* smtp_port */
    char lease[16];                       /* delivery_lease_s as text */
    char max_age[32];                     /* delivery_max_age_s as text */
    char resolver[128];                   /* dns_resolver */
    dkim_signer_t *signer;                /* process-wide */
    int enabled;                          /* delivery_enabled */
    double shape_rate;                    /* shaping_rate */
    double shape_burst;                   /* shaping_burst */
    shape_override_t *overrides;          /* shaping_overrides */
    size_t noverrides;                    /* how many */
    char *unsub_base;                     /* public_url (or its default), no trailing '/' */
    int unsub_https;                      /* it is https: the one-click URL can be offered */
    metric_t *m_sign[2];                  /* signing time: [0] Ed25519 only, [1] both keys */
} M;

int mailer_configure(const config_t *cfg, sbuf_t *err);
void mailer_shutdown(void);

/* The shaping key and budget for an MX host name (see the header). */
static void s_shape_mx(const char *mx, delivery_job_t *job)
{
    const shape_override_t *best = shape_override_match(M.overrides, M.noverrides, mx);
    if (best) {
        snprintf(job->shape_key, sizeof job->shape_key, "%s", best->suffix);
        job->shape_rate = best->rate;
        job->shape_burst = best->burst;
        job->max_conns = best->conns;
        job->max_per_conn = best->per_conn;
        job->conn_rate = best->conn_rate;
        return;
    }
    size_t i = 0;
    for (; mx[i] && i + 1 < sizeof job->shape_key; i++)
        job->shape_key[i] = (char)tolower((unsigned char)mx[i]);
    job->shape_key[i] = 0;
    job->shape_rate = M.shape_rate;
    job->shape_burst = M.shape_burst;
}

int mailer_configure(const config_t *cfg, sbuf_t *err)
{
    free(M.overrides);
    free(M.unsub_base);
    memset(&M, 0, sizeof M);
    M.unsub_base = unsub_token_base_url(cfg, err);
    if (!M.unsub_base)
        return -1;
    /* RFC 8058 one-click needs https; over plain http bulk mail carries the
     * mailto address only. */
    M.unsub_https = strncasecmp(M.unsub_base, "https://", 8) == 0;
    M.shape_rate = (double)config_int(cfg, "shaping_rate");
    M.shape_burst = (double)config_int(cfg, "shaping_burst");
    if (shape_overrides_parse(config_str(cfg, "shaping_overrides"), &M.overrides, &M.noverrides,
                              err) != 0)
        return -1;
    M.have_key = secretbox_key_parse(config_str(cfg, "secret_key"), M.key) == 0;
    const char *relay = config_str(cfg, "smtp_relay");
    if (relay[0]) {
        const char *colon = strrchr(relay, ':');
        if (!colon || colon == relay || (size_t)(colon - relay) >= sizeof M.relay_host ||
            atoi(colon + 1) <= 0 || atoi(colon + 1) > 65535) {
            sbuf_appendf(err, "setting 'smtp_relay': '%s' is not host:port", relay);
            return -1;
        }
        memcpy(M.relay_host, relay, (size_t)(colon - relay));
        M.relay_port = atoi(colon + 1);
    }
    M.mx_port = (int)config_int(cfg, "smtp_port");
    M.enabled = config_bool(cfg, "delivery_enabled");
    snprintf(M.lease, sizeof M.lease, "%lld", (long long)config_int(cfg, "delivery_lease_s"));
    snprintf(M.max_age, sizeof M.max_age, "%lld",
             (long long)config_int(cfg, "delivery_max_age_s"));
    snprintf(M.resolver, sizeof M.resolver, "%s", config_str(cfg, "dns_resolver"));
    /* Per message, both signatures together (the body hash is shared):
     * RSA-2048 is about 0.25 ms of it, Ed25519 about 0.04 ms. */
    static const double sign_buckets[] = {0.00002, 0.00005, 0.0001, 0.0002, 0.0003, 0.0005,
                                          0.001,   0.002,   0.005,  0.01,   0.05};
    static const char *const keys_only[] = {"keys", NULL};
    metric_family_t *f = metrics_family(
        METRIC_HISTOGRAM, "postchi_delivery_dkim_sign_seconds",
        "DKIM signing time per message, by the keys that signed it (ed25519, or both: Ed25519 "
        "and RSA-2048).",
        keys_only, sign_buckets, sizeof sign_buckets / sizeof sign_buckets[0]);
    M.m_sign[0] = metrics_series(f, (const char *const[]){"ed25519", NULL});
    M.m_sign[1] = metrics_series(f, (const char *const[]){"both", NULL});
    M.signer = dkim_signer_new(err);
    return M.signer ? 0 : -1;
}

void mailer_shutdown(void)
{
    dkim_signer_destroy(&M.signer);
    free(M.overrides);
    M.overrides = NULL;
    M.noverrides = 0;
    free(M.unsub_base);
    M.unsub_base = NULL;
}

/* Columns of a claimed row, in order. */
#define CLAIMED                                                                                    \
    " RETURNING m.id, m.organization_id, m.from_addr, m.from_name, to_json(m.reply_to)::text,"    \
    " m.recipient, to_json(m.to_addrs)::text, to_json(m.cc_addrs)::text, m.subject, m.html,"      \
    " m.text, m.headers::text, m.message_id, m.send_id, m.attempts,"                             \
    " EXISTS (SELECT 1 FROM message_attachments a WHERE a.send_id = m.send_id), m.batch_id"

static const char *const SQL_CLAIM_ONE =
    "UPDATE messages m SET status = 'sending', attempts = attempts + 1, updated_at = now(),"
    " lease_until = now() + make_interval(secs => $3::int)"
    " WHERE m.id = $1::uuid AND m.recipient_domain = $2 AND m.status IN ('queued', 'deferred')"
    " AND m.next_attempt_at <= now()" CLAIMED;

static const char *const SQL_CLAIM_DUE =
    "UPDATE messages m SET status = 'sending', attempts = attempts + 1, updated_at = now(),"
    " lease_until = now() + make_interval(secs => $2::int)"
    " WHERE m.id IN (SELECT id FROM messages WHERE recipient_domain = $1"
    " AND status IN ('queued', 'deferred') AND next_attempt_at <= now()"
    " AND ($3::int < 0 OR " MAILER_SHARD_SQL("id") " = $3::int)"
    " ORDER BY next_attempt_at LIMIT $4::int FOR UPDATE SKIP LOCKED)" CLAIMED;
#define CLAIM_BATCH 200 /* rows claimed at most at once */

static const char *const SQL_KEYS =
    "SELECT name, return_path, dkim_ed25519_selector, dkim_ed25519_private,"
    " dkim_rsa_selector, dkim_rsa_private, signing FROM domains"
    " WHERE organization_id = $1 AND name = lower(split_part($2, '@', 2))"
    " AND status = 'verified'";

static const char *const SQL_CONTENT =
    "SELECT html, text FROM message_contents WHERE organization_id = $1 AND send_id = $2";

static const char *const SQL_ATTACHMENTS =
    "SELECT filename, content_type, content_id, data FROM message_attachments"
    " WHERE organization_id = $1 AND send_id = $2 ORDER BY idx";

/* Each of these applies to the claim that made the job only ($3, its
 * attempts): after a lease ran out the row may have been claimed again. */
static const char *const SQL_FAIL =
    "WITH m AS (UPDATE messages SET status = 'failed', lease_until = NULL, last_response = $2,"
    " updated_at = now() WHERE id = $1 AND status = 'sending' AND attempts = $3::int"
    " RETURNING id, organization_id)"
    " INSERT INTO message_events (organization_id, message_id, type, detail)"
    " SELECT organization_id, id, 'failed', jsonb_build_object('reason', $2::text) FROM m";

/* DNS trouble, or a database read failed: try again later, from five
 * minutes doubling to six hours, with jitter; once the message has been
 * due longer than delivery_max_age_s ($4) it fails, as after SMTP
 * deferrals: a domain whose DNS never answers must not keep a message
 * forever. */
static const char *const SQL_TEMPFAIL =
    "WITH m AS (UPDATE messages SET status = CASE WHEN greatest(created_at, send_at)"
    "   < now() - make_interval(secs => $4::int) THEN 'failed' ELSE 'deferred' END,"
    " lease_until = NULL, last_response = $2, next_attempt_at = now() + make_interval(secs =>"
    "   least(300 * power(2, least(greatest(attempts - 1, 0), 10)), 21600)"
    "   * (0.75 + random() * 0.5)), updated_at = now()"
    " WHERE id = $1 AND status = 'sending' AND attempts = $3::int"
    " RETURNING id, organization_id, status)"
    " INSERT INTO message_events (organization_id, message_id, type, detail)"
    " SELECT organization_id, id, status, jsonb_build_object('reason', $2::text) FROM m";

#define KEY_CACHE 8          /* sending domains remembered per activation */
#define KEY_CACHE_MS 60000   /* then read again: rotation and deletion show */

typedef struct {
    char org[40];            /* organization id */
    char domain[256];        /* sending domain */
    char ed_sel[64], rsa_sel[64]; /* selectors */
    char return_path[300];   /* VERP domain */
    int ed_only;             /* signing = 'ed25519' */
    char *ed_pem, *rsa_pem;  /* opened private keys (wiped when dropped) */
    int64_t loaded;          /* when read; 0 = empty slot */
} key_entry_t;

/* The body of the send being worked through: a bulk send's rows share one
 * body, so it is read, MIME-encoded and hashed for DKIM once per send (per
 * activation), not once per recipient. */
#define BODY_CACHE_MAX (4 << 20) /* bigger bodies are built per row, not kept */

typedef struct {
    char send_id[40];            /* whose body; "" = none */
    mime_body_t *body;           /* the encoded body */
    char bh[DKIM_BH_SIZE];       /* its DKIM body hash */
} body_cache_t;

typedef struct {
    key_entry_t keys[KEY_CACHE]; /* recently used sending domains */
    int next;                    /* slot to reuse next */
    body_cache_t body;           /* the current send's body */
    char domain[256];            /* recipient domain (from the key) */
} mailer_state_t;

static void s_key_drop(key_entry_t *k)
{
    if (k->ed_pem) {
        OPENSSL_cleanse(k->ed_pem, strlen(k->ed_pem));
        free(k->ed_pem);
    }
    if (k->rsa_pem) {
        OPENSSL_cleanse(k->rsa_pem, strlen(k->rsa_pem));
        free(k->rsa_pem);
    }
    memset(k, 0, sizeof *k);
}

static int s_activate(actor_ctx_t *ctx, void **state_p)
{
    (void)ctx;
    *state_p = calloc(1, sizeof(mailer_state_t));
    return *state_p ? 0 : -1;
}

static void s_passivate(void *state)
{
    mailer_state_t *st = state;
    for (int i = 0; st && i < KEY_CACHE; i++)
        s_key_drop(&st->keys[i]);
    if (st)
        mime_body_destroy(&st->body.body);
    free(st);
}

/* PostgreSQL bytea text ("\x0a1b...") to bytes in out. 0 or -1. */
static int s_bytea(const char *hex, sbuf_t *out)
{
    if (!hex || hex[0] != '\\' || hex[1] != 'x')
        return -1;
    for (const char *p = hex + 2; p[0] && p[1]; p += 2) {
        char b[3] = {p[0], p[1], 0};
        unsigned char c = (unsigned char)strtoul(b, NULL, 16);
        if (sbuf_append(out, &c, 1) != 0)
            return -1;
    }
    return 0;
}

/* A JSON array of strings as a C array (pointers into arr). */
static size_t s_strings(json_t *arr, const char **out, size_t max)
{
    size_t n = 0, i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (n < max && json_is_string(v))
            out[n++] = json_string_value(v);
    }
    return n;
}

static void s_fail(db_t *db, const char *id, const char *attempt, const char *why)
{
    const char *p[] = {id, why, attempt};
    db_exec(db, SQL_FAIL, 3, p, NULL);
    log_warn("message not sendable message=%s: %s", id, why);
}

static void s_tempfail(db_t *db, const char *id, const char *attempt, const char *why)
{
    const char *p[] = {id, why, attempt, M.max_age};
    db_exec(db, SQL_TEMPFAIL, 4, p, NULL);
}

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double s_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The sending domain's opened keys, from the cache or the database.
 * NULL with *why set when the domain is not verified or its keys do not
 * open, or with *transient set too when the query itself failed (a
 * timeout, a lost connection: the message is fine, try it later). */
static key_entry_t *s_keys(mailer_state_t *st, db_t *db, const char *org, const char *from,
                           const char **why, int *transient)
{
    const char *at = strrchr(from, '@');
    const char *dom = at ? at + 1 : from;
    int64_t now = s_now_ms();
    for (int i = 0; i < KEY_CACHE; i++) {
        key_entry_t *k = &st->keys[i];
        if (k->loaded && now - k->loaded < KEY_CACHE_MS && strcmp(k->org, org) == 0 &&
            strcasecmp(k->domain, dom) == 0)
            return k;
    }
    key_entry_t *k = &st->keys[st->next];
    st->next = (st->next + 1) % KEY_CACHE;
    s_key_drop(k);
    *why = "the sending domain is not verified (or was deleted)";
    const char *kp[] = {org, from};
    db_result_t *keys = db_query_prepared(db, SQL_KEYS, 2, kp, NULL);
    sbuf_t *raw = sbuf_new(256), *ed = sbuf_new(256), *rsa = sbuf_new(2048);
    key_entry_t *out = NULL;
    if (!keys || !raw || !ed || !rsa) {
        *why = "the sending domain's keys could not be read";
        *transient = 1;
        goto done;
    }
    if (db_result_rows(keys) != 1)
        goto done;
    *why = "the domain's keys cannot be opened with secret_key";
    if (!M.have_key || s_bytea(db_result_get(keys, 0, 3), raw) != 0 ||
        secretbox_open(M.key, sbuf_data(raw), sbuf_len(raw), ed) != 0)
        goto done;
    sbuf_reset(raw);
    if (s_bytea(db_result_get(keys, 0, 5), raw) != 0 ||
        secretbox_open(M.key, sbuf_data(raw), sbuf_len(raw), rsa) != 0)
        goto done;
    snprintf(k->org, sizeof k->org, "%s", org);
    snprintf(k->domain, sizeof k->domain, "%s", db_result_get(keys, 0, 0));
    snprintf(k->return_path, sizeof k->return_path, "%s", db_result_get(keys, 0, 1));
    snprintf(k->ed_sel, sizeof k->ed_sel, "%s", db_result_get(keys, 0, 2));
    snprintf(k->rsa_sel, sizeof k->rsa_sel, "%s", db_result_get(keys, 0, 4));
    k->ed_only = strcmp(db_result_get(keys, 0, 6), "ed25519") == 0;
    k->ed_pem = strndup(sbuf_data(ed), sbuf_len(ed));
    k->rsa_pem = strndup(sbuf_data(rsa), sbuf_len(rsa));
    if (!k->ed_pem || !k->rsa_pem) {
        s_key_drop(k);
        goto done;
    }
    k->loaded = now;
    out = k;
done:
    if (ed)
        OPENSSL_cleanse((void *)sbuf_data(ed), sbuf_len(ed));
    if (rsa)
        OPENSSL_cleanse((void *)sbuf_data(rsa), sbuf_len(rsa));
    sbuf_destroy(&raw);
    sbuf_destroy(&ed);
    sbuf_destroy(&rsa);
    db_result_free(&keys);
    return out;
}

/* Copy src into dst[size], cut to fit (names and addresses from core/mx,
 * which already bounds them). */
static void s_copy(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* The body of claimed row i: its send's cached one, or read (bodies from
 * message_contents, or the row itself when written before it existed;
 * attachments when the claim said there are some), encoded and hashed now
 * and kept for the send's next rows when not too big (else it is put in
 * tmp, which the caller destroys). NULL with *why (and err) when it cannot
 * be built; *transient set when that is because a read failed (the message
 * is fine and must be tried again, never sent without its attachments). */
static const body_cache_t *s_body(mailer_state_t *st, db_t *db, db_result_t *res, int i,
                                  body_cache_t *tmp, const char **why, int *transient,
                                  sbuf_t *err)
{
    const char *org = db_result_get(res, i, 1), *send = db_result_get(res, i, 13);
    if (st->body.body && strcmp(st->body.send_id, send) == 0)
        return &st->body;
    const char *html = db_result_get(res, i, 9), *text = db_result_get(res, i, 10);
    db_result_t *content = NULL, *att = NULL;
    const char *p[] = {org, send};
    if (!html && !text) {
        content = db_query_prepared(db, SQL_CONTENT, 2, p, err);
        if (content && db_result_rows(content) == 1) {
            html = db_result_get(content, 0, 0);
            text = db_result_get(content, 0, 1);
        }
    }
    /* Most sends have no attachments: ask only when the claim said so. */
    int want_att = strcmp(db_result_get(res, i, 15), "t") == 0;
    if (want_att)
        att = db_query_prepared(db, SQL_ATTACHMENTS, 2, p, err);
    if ((!html && !text && !content) || (want_att && !att)) {
        *why = "the message's content could not be read";
        *transient = 1;
        db_result_free(&content);
        db_result_free(&att);
        return NULL;
    }
    int natt = att ? db_result_rows(att) : 0;
    sbuf_t *blobs = sbuf_new(1024);
    size_t *offs = natt ? calloc((size_t)natt * 2, sizeof *offs) : NULL;
    mime_part_t *parts = natt ? calloc((size_t)natt, sizeof *parts) : NULL;
    int whole = blobs && (natt == 0 || (offs && parts));
    for (int a = 0; a < natt && whole; a++) {
        offs[2 * a] = sbuf_len(blobs);
        whole = s_bytea(db_result_get(att, a, 3), blobs) == 0;
        offs[2 * a + 1] = sbuf_len(blobs) - offs[2 * a];
    }
    if (!whole) {
        /* Out of memory, or an attachment that does not decode: never
         * send the message without it; try again later. */
        *why = "the message's attachments could not be read";
        *transient = 1;
        sbuf_destroy(&blobs);
        free(offs);
        free(parts);
        db_result_free(&content);
        db_result_free(&att);
        return NULL;
    }
    for (int a = 0; a < natt; a++) {
        parts[a].filename = db_result_get(att, a, 0);
        parts[a].content_type = db_result_get(att, a, 1);
        parts[a].content_id = db_result_get(att, a, 2);
        parts[a].data = sbuf_data(blobs) + offs[2 * a];
        parts[a].len = offs[2 * a + 1];
    }
    mime_msg_t m = {
        .html = html,
        .text = text,
        .attachments = parts,
        .nattachments = (size_t)natt,
    };
    mime_body_t *body = mime_body_new(&m, err);
    sbuf_destroy(&blobs);
    free(offs);
    free(parts);
    db_result_free(&content);
    db_result_free(&att);
    size_t blen = 0;
    const char *bdata = body ? mime_body_data(body, &blen) : NULL;
    char bh[DKIM_BH_SIZE];
    if (!body || dkim_body_hash(bdata, blen, bh) != 0) {
        *why = "the message cannot be built";
        mime_body_destroy(&body);
        return NULL;
    }
    body_cache_t *slot = mime_body_size(body) <= BODY_CACHE_MAX ? &st->body : tmp;
    mime_body_destroy(&slot->body);
    snprintf(slot->send_id, sizeof slot->send_id, "%s", send);
    slot->body = body;
    memcpy(slot->bh, bh, sizeof bh);
    return slot;
}

/* The recipient domain's MX answer, looked up once per claimed batch: the
 * rows of a batch share their domain, and a slow resolver asked per row
 * would hand the batch's last rows to the engine after their lease. */
typedef struct {
    char domain[256];  /* whose answer; "" = none yet */
    int rc;            /* MX_OK, MX_TEMPFAIL, MX_PERMFAIL */
    mx_host_t hosts[4];
    size_t n;          /* hosts filled */
    char err[256];     /* why, when not MX_OK */
} mx_answer_t;

static const mx_answer_t *s_mx(mx_answer_t *a, const char *domain)
{
    if (a->domain[0] && strcasecmp(a->domain, domain) == 0)
        return a;
    sbuf_t *err = sbuf_new(128);
    a->n = 0;
    a->rc = mx_resolve(domain, M.resolver[0] ? M.resolver : NULL, 5000, a->hosts, 4, &a->n, err);
    snprintf(a->err, sizeof a->err, "%s", err && sbuf_len(err) ? sbuf_data(err) : "");
    sbuf_destroy(&err);
    s_copy(a->domain, sizeof a->domain, domain);
    return a;
}

/* Build, sign and hand one claimed row (row i of res) to the engine. */
static void s_send_row(actor_ctx_t *ctx, mailer_state_t *st, db_t *db, db_result_t *res, int i,
                       mx_answer_t *mxa)
{
    const char *id = db_result_get(res, i, 0), *org = db_result_get(res, i, 1);
    const char *attempt = db_result_get(res, i, 14);
    const char *from = db_result_get(res, i, 2), *rcpt = db_result_get(res, i, 5);
    sbuf_t *err = sbuf_new(128), *msg = sbuf_new(4096), *sig = sbuf_new(1024);
    json_t *to = json_loads(db_result_get(res, i, 6), 0, NULL);
    json_t *cc = json_loads(db_result_get(res, i, 7), 0, NULL);
    json_t *reply = json_loads(db_result_get(res, i, 4), 0, NULL);
    json_t *hdrs = json_loads(db_result_get(res, i, 11), 0, NULL);
    char *verp = NULL, *unsub_mailto = NULL, *unsub_url = NULL;
    mime_header_t *hv = NULL;
    delivery_job_t *job = NULL;
    body_cache_t tmp = {0};
    if (!err || !msg || !sig)
        goto done;

    const char *why = NULL;
    int transient = 0;
    key_entry_t *keys = s_keys(st, db, org, from, &why, &transient);
    if (!keys) {
        if (transient)
            s_tempfail(db, id, attempt, why);
        else
            s_fail(db, id, attempt, why);
        goto done;
    }
    const body_cache_t *body = s_body(st, db, res, i, &tmp, &why, &transient, err);
    if (!body) {
        char reason[300];
        snprintf(reason, sizeof reason, "%s: %s", why, sbuf_data(err));
        if (transient)
            s_tempfail(db, id, attempt, reason);
        else
            s_fail(db, id, attempt, reason);
        goto done;
    }
    size_t nh = json_object_size(hdrs), k = 0;
    hv = nh ? calloc(nh, sizeof *hv) : NULL;
    const char *hk;
    json_t *hval;
    json_object_foreach(hdrs, hk, hval)
    {
        if (hv && json_is_string(hval)) {
            hv[k].name = hk;
            hv[k].value = json_string_value(hval);
            k++;
        }
    }
    /* Bulk sends (a batch) are marketing: List-Unsubscribe with a token
     * naming this row, by mail to the return-path domain and, over https,
     * by RFC 8058 one-click. Single sends are transactional: none. */
    char utok[UNSUB_TOKEN_LEN + 1];
    if (db_result_get(res, i, 16) && M.have_key && unsub_token_make(M.key, id, utok) == 0) {
        unsub_mailto = mime_verp(UNSUB_LOCAL, utok, keys->return_path);
        size_t ul = strlen(M.unsub_base) + sizeof UNSUB_PATH + UNSUB_TOKEN_LEN;
        unsub_url = M.unsub_https ? malloc(ul) : NULL;
        if (unsub_url)
            snprintf(unsub_url, ul, "%s" UNSUB_PATH "%s", M.unsub_base, utok);
    }
    const char *tov[100], *ccv[100], *rtv[10]; /* reply_to: the API takes up to 10 */
    size_t nto = s_strings(to, tov, 100), ncc = s_strings(cc, ccv, 100);
    size_t nrt = s_strings(reply, rtv, 10);
    mime_msg_t m = {
        .from_name = db_result_get(res, i, 3),
        .from_addr = from,
        .to = tov,
        .nto = nto,
        .cc = ccv,
        .ncc = ncc,
        .reply_to_list = rtv,
        .nreply_to = nrt,
        .subject = db_result_get(res, i, 8),
        .headers = hv,
        .nheaders = k,
        .message_id = db_result_get(res, i, 12),
        .list_unsubscribe_mailto = unsub_mailto,
        .list_unsubscribe_url = unsub_url,
        .date = (int64_t)time(NULL),
    };
    if (mime_build_with_body(&m, body->body, msg, NULL, err) != 0) {
        char reason[300];
        snprintf(reason, sizeof reason, "the message cannot be built: %s", sbuf_data(err));
        s_fail(db, id, attempt, reason);
        goto done;
    }
    dkim_sign_key_t dk[2] = {
        {keys->domain, keys->ed_sel, keys->ed_pem, 1},
        {keys->domain, keys->rsa_sel, keys->rsa_pem, 0},
    };
    /* "ed25519": the domain asked to skip the RSA signature (and its cost). */
    size_t nkeys = keys->ed_only ? 1 : 2;
    double t0 = s_now_s();
    int signed_rc = dkim_signer_sign_bh(M.signer, dk, nkeys, sbuf_data(msg), sbuf_len(msg),
                                        body->bh, sig, err);
    metric_observe(M.m_sign[nkeys - 1], s_now_s() - t0);
    if (signed_rc != 0) {
        char reason[300];
        snprintf(reason, sizeof reason, "the message cannot be signed: %s", sbuf_data(err));
        s_fail(db, id, attempt, reason);
        goto done;
    }
    /* VERP: bounces come back to bounces+<row id and its MAC>@<return path>
     * (core/verp.h: only we can make a token inbound will act on). */
    char token[VERP_TOKEN_LEN + 1];
    if (verp_token_make(M.key, id, token, sizeof token) == 0)
        verp = mime_verp("bounces", token, keys->return_path);
    job = calloc(1, sizeof *job);
    if (!job || !verp)
        goto done;
    snprintf(job->id, sizeof job->id, "%s", id);
    job->attempt = atoi(attempt);
    snprintf(job->domain, sizeof job->domain, "%s", st->domain);
    if (M.relay_host[0]) {
        snprintf(job->host, sizeof job->host, "%s", M.relay_host);
        job->port = M.relay_port;
        snprintf(job->shape_key, sizeof job->shape_key, "relay:%s:%d", M.relay_host,
                 M.relay_port);
        job->shape_rate = M.shape_rate;
        job->shape_burst = M.shape_burst;
    } else {
        const char *rdomain = strrchr(rcpt, '@') ? strrchr(rcpt, '@') + 1 : rcpt;
        const mx_answer_t *ans = s_mx(mxa, rdomain);
        const mx_host_t *hosts = ans->hosts;
        size_t n = ans->n;
        if (ans->rc == MX_PERMFAIL) {
            char reason[300];
            snprintf(reason, sizeof reason, "the recipient domain takes no mail: %s", ans->err);
            s_fail(db, id, attempt, reason);
            goto done;
        }
        if (ans->rc != MX_OK || n == 0 || hosts[0].naddrs == 0) {
            s_tempfail(db, id, attempt, ans->err[0] ? ans->err : "no MX host answered");
            goto done;
        }
        s_copy(job->host, sizeof job->host, hosts[0].addrs[0]);
        s_copy(job->tls_name, sizeof job->tls_name, hosts[0].name);
        /* Fallback, in preference order: the first host's other
         * addresses, then the next hosts'. */
        for (size_t h = 0; h < n; h++) {
            for (size_t a = h == 0 ? 1 : 0; a < hosts[h].naddrs && job->nalt < DELIVERY_MAX_ALTS;
                 a++) {
                s_copy(job->alt[job->nalt], sizeof job->alt[0], hosts[h].addrs[a]);
                s_copy(job->alt_name[job->nalt], sizeof job->alt_name[0], hosts[h].name);
                job->nalt++;
            }
        }
        job->port = M.mx_port;
        s_shape_mx(hosts[0].name, job);
    }
    /* One buffer: signatures first, then the message. */
    size_t len = sbuf_len(sig) + sbuf_len(msg);
    job->data = malloc(len + 1);
    job->rcpt = strdup(rcpt);
    job->mail_from = verp;
    verp = NULL;
    if (!job->data || !job->rcpt)
        goto done;
    memcpy(job->data, sbuf_data(sig), sbuf_len(sig));
    memcpy(job->data + sbuf_len(sig), sbuf_data(msg), sbuf_len(msg));
    job->data[len] = 0;
    job->len = len;
    /* Bodies are MIME-encoded to 7 bits; the SMTP client asks for SMTPUTF8
     * by itself when an address needs it. */
    job->smtputf8 = 0;
    if (delivery_submit(delivery_instance(), &job) != 0)
        log_warn("delivery engine stopping; message=%s stays leased and is re-driven", id);
    (void)ctx;
done:
    delivery_job_free(&job);
    free(verp);
    mime_body_destroy(&tmp.body);
    free(unsub_mailto);
    free(unsub_url);
    free(hv);
    json_decref(to);
    json_decref(cc);
    json_decref(reply);
    json_decref(hdrs);
    sbuf_destroy(&err);
    sbuf_destroy(&msg);
    sbuf_destroy(&sig);
}

static int s_receive(actor_ctx_t *ctx, void *state, const envelope_t *msg)
{
    mailer_state_t *st = state;
    if (msg->type != MSG_SEND || !M.enabled)
        return 0; /* paused: rows stay queued, the sweeper wakes us later */
    if (!delivery_instance())
        return -1;
    db_t *db = actor_db(ctx);
    if (!db)
        return -1; /* nothing claimed: the sweeper re-drives */
    /* Key "<domain>#<shard>": this actor claims only its shard's rows. */
    char domain[256], shard[8] = "-1";
    const char *key = actor_key(ctx), *hash = strrchr(key, '#');
    size_t dl = hash ? (size_t)(hash - key) : strlen(key);
    if (dl >= sizeof domain)
        return -1;
    memcpy(domain, key, dl);
    domain[dl] = 0;
    if (hash)
        snprintf(shard, sizeof shard, "%d", atoi(hash + 1) % MAILER_SHARDS);
    snprintf(st->domain, sizeof st->domain, "%s", domain);
    /* Backpressure: while this worker holds enough of the domain's mail,
     * claim nothing (the rows stay queued); the engine wakes us at its low
     * mark. */
    char self[300];
    snprintf(self, sizeof self, "mailer/%s", key);
    int room = delivery_admit(delivery_instance(), domain, self);
    if (room <= 0)
        return 0;
    char limit[16];
    snprintf(limit, sizeof limit, "%d", room < CLAIM_BATCH ? room : CLAIM_BATCH);
    db_result_t *res = NULL;
    if (msg->name_len == 7 && memcmp(msg->name, "deliver", 7) == 0) {
        json_t *b = json_loadb(msg->body, msg->body_len, 0, NULL);
        const char *id = json_string_value(json_object_get(b, "message_id"));
        if (id) {
            const char *p[] = {id, domain, M.lease};
            res = db_query_prepared(db, SQL_CLAIM_ONE, 3, p, NULL);
        }
        json_decref(b);
    } else if (msg->name_len == 4 && memcmp(msg->name, "wake", 4) == 0) {
        const char *p[] = {domain, M.lease, shard, limit};
        /* Planned on every call, not prepared: a plan cached while the
         * table was small (a hash of a sequential scan of messages) stays
         * cached as it grows; planning now sees its current size. */
        res = db_query(db, SQL_CLAIM_DUE, 4, p, NULL);
    } else {
        return -1;
    }
    if (!res)
        return 0; /* a bad id or a failed claim: nothing is leased */
    int rows = db_result_rows(res);
    mx_answer_t *mxa = calloc(1, sizeof *mxa);
    for (int i = 0; i < rows; i++) {
        if (mxa)
            s_send_row(ctx, st, db, res, i, mxa);
        /* else out of memory: the rows stay leased and are re-driven */
    }
    free(mxa);
    db_result_free(&res);
    /* A full batch means more may be due: keep draining through our own
     * mailbox (other actors get their turn in between) instead of waiting
     * for the sweeper's next round. */
    if (rows > 0 && rows == atoi(limit)) {
        actor_send(ctx, self, "wake", "{}", 2);
    }
    return 0;
}

const actor_kind_t actor_kind_mailer = {"mailer", s_activate, s_receive, s_passivate};
