/*
 * config - the settings table and the three sources that fill it (see
 * config.h): built-in defaults, a `name = value` file, POSTCHI_* variables.
 *
 * Every setting is one row of s_settings; defaults are written as the same
 * text a user would type and go through the same parser, so a row cannot
 * carry a default its own range refuses (config_new panics if one does).
 * Adding a setting is adding a row.
 *
 * What can go wrong: every bad value is refused with a message naming the
 * setting (and file line or variable) and saying what was wrong, and the
 * previous value is kept. Values quoted back in messages go through
 * log_printable, so a stray control byte in a file cannot garble a terminal
 * or a log. Secret settings are masked by config_print.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"

typedef enum { CONFIG_INT, CONFIG_STR, CONFIG_BOOL, CONFIG_ENUM } config_type_t;

typedef struct {
    const char *name;         /* as in the file; POSTCHI_<NAME> in the environment */
    config_type_t type;       /* how the value is parsed and read */
    const char *def;          /* default, as a user would write it */
    int64_t min, max;         /* CONFIG_INT: accepted range, inclusive */
    const char *const *words; /* CONFIG_ENUM: allowed words, NULL-terminated */
    bool secret;              /* config_print masks it */
    const char *help;         /* one line for `postchi help config` */
} setting_t;

static const char *const s_log_levels[] = {"debug", "info", "warn", "error", NULL};

/* smtp_tls: STARTTLS policy of outgoing mail (smtp_client.h's modes). */
static const char *const s_smtp_tls[] = {"opportunistic", "required", "verified", NULL};

/* Accepted for CONFIG_BOOL, in true/false pairs. */
static const char *const s_bool_words[] = {"true", "false", "yes", "no", "on",
                                           "off",  "1",     "0",   NULL};

#define INT(n, d, lo, hi, h)                                                                       \
    {                                                                                              \
        n, CONFIG_INT, #d, lo, hi, NULL, false, h                                                  \
    }
#define STR(n, d, h)                                                                               \
    {                                                                                              \
        n, CONFIG_STR, d, 0, 0, NULL, false, h                                                     \
    }
#define SECRET(n, d, h)                                                                            \
    {                                                                                              \
        n, CONFIG_STR, d, 0, 0, NULL, true, h                                                      \
    }
#define ENUM(n, d, w, h)                                                                           \
    {                                                                                              \
        n, CONFIG_ENUM, d, 0, 0, w, false, h                                                       \
    }

static const setting_t s_settings[] = {
    STR("data_dir", "data",
        "folder where `postchi up` keeps PostgreSQL, Redis, captured mail, pid files and logs"),
    STR("node_id", "", "this process's id in the mesh; empty means <hostname>-<pid>"),
    ENUM("log_level", "info", s_log_levels, "lowest level written to the log"),
    STR("broker_endpoint", "tcp://127.0.0.1:5570",
        "broker's ZeroMQ endpoint: the broker binds it, workers and API nodes connect to it"),
    INT("heartbeat_interval_ms", 1000, 50, 60000, "heartbeat period between broker and peers"),
    INT("heartbeat_liveness", 3, 1, 100, "missed heartbeats after which a peer is dead"),
    INT("broker_queue_max", 10000, 0, 10000000,
        "messages the broker holds while no worker can take them"),
    INT("broker_queue_ttl_ms", 5000, 0, 600000,
        "how long a held message waits before its sender gets an error"),
    INT("zmq_hwm", 100000, 1000, 10000000, "ZeroMQ high-water mark on every mesh socket"),
    INT("max_frame_bytes", 1048576, 1024, 67108864, "largest mesh frame accepted"),
    INT("worker_threads", 2, 1, 256, "threads running actor handlers in a worker"),
    INT("worker_capacity", 100, 1, 100000, "this worker's weight in the hash ring"),
    INT("actor_idle_ms", 60000, 100, 86400000, "an actor idle this long is passivated"),
    INT("request_timeout_ms", 5000, 1, 600000, "default time a request waits for its reply"),
    STR("metrics_bind", "127.0.0.1", "address of the status server (/metrics, /healthz, /readyz)"),
    INT("metrics_port", 0, 0, 65535,
        "port of the status server; 0 disables it (broker and workers)"),
    STR("api_bind", "127.0.0.1", "address the REST API listens on"),
    INT("api_port", 8080, 1, 65535, "port the REST API listens on"),
    SECRET("pg_dsn", "", "full libpq connection string; when set it overrides the pg_* settings"),
    STR("pg_host", "127.0.0.1", "PostgreSQL host or socket directory"),
    INT("pg_port", 54329, 1, 65535, "PostgreSQL port"),
    STR("pg_database", "postchi", "PostgreSQL database"),
    STR("pg_user", "postchi", "PostgreSQL user"),
    SECRET("pg_password", "", "PostgreSQL password"),
    STR("redis_host", "127.0.0.1", "Redis host"),
    INT("redis_port", 63790, 1, 65535, "Redis port"),
    INT("startup_wait_ms", 0, 0, 600000,
        "wait this long, with back-off, for PostgreSQL and Redis at start; 0 fails at once"),
    INT("smtp_sink_port", 2525, 1, 65535, "port of the capture sink `postchi up` runs"),
    INT("up_workers", 2, 1, 64, "workers `postchi up` starts"),
    INT("up_metrics_port", 9470, 1, 65535,
        "first status-server port `postchi up` hands out (broker, then workers)"),
    INT("up_inbound_port", 2526, 1, 65535,
        "first return-path (bounce) listener port `postchi up` gives its workers, one each"),
    INT("api_threads", 8, 1, 256, "threads serving HTTP requests in an API node"),
    INT("api_body_max", 1048576, 1024, 67108864, "largest request body accepted, in bytes"),
    INT("api_batch_body_max", 10485760, 1024, 268435456,
        "largest request body accepted by batch calls, in bytes"),
    INT("api_request_timeout_ms", 30000, 100, 600000,
        "a request whose body has not arrived in this time is refused"),
    SECRET("jwt_secret", "",
           "HS256 key for login tokens, at least 32 bytes; the API refuses to start without it"),
    STR("jwt_issuer", "postchi", "issuer (iss) written into and required of login tokens"),
    INT("jwt_ttl_s", 86400, 60, 2592000, "lifetime of a login token, in seconds"),
    SECRET("secret_key", "",
           "64 hex digits (32 bytes) that encrypt DKIM private keys at rest; the API refuses to "
           "start without it"),
    STR("public_url", "",
        "base URL recipients' unsubscribe links use (https://mail.example.com); empty means "
        "http://<api_bind>:<api_port>, which gets mailto-only List-Unsubscribe"),
    INT("rate_limit_rps", 100, 1, 1000000, "requests per second each API key may make, sustained"),
    INT("rate_limit_burst", 200, 1, 10000000, "requests an API key may make at once above its rate"),
    INT("login_max_failures", 5, 1, 1000,
        "failed logins per account, and per address, allowed in 15 minutes"),
    INT("max_message_bytes", 26214400, 1024, 157286400,
        "largest message (after MIME encoding) the send API accepts, in bytes"),
    {"delivery_enabled", CONFIG_BOOL, "true", 0, 0, NULL, false,
     "false pauses sending: the API still accepts messages, which wait queued"},
    STR("smtp_relay", "",
        "host:port of a relay (smarthost) all mail goes through; empty delivers by MX lookup"),
    INT("smtp_port", 25, 1, 65535, "port of recipient MX hosts (direct delivery)"),
    STR("smtp_helo_name", "localhost", "name this host gives in EHLO"),
    ENUM("smtp_tls", "opportunistic", s_smtp_tls,
         "STARTTLS for outgoing mail: opportunistic (when offered), required (defer without "
         "it), verified (also check the certificate chain and name)"),
    STR("smtp_tls_ca_file", "",
        "PEM file of CAs smtp_tls=verified trusts instead of the system's (a private CA)"),
    STR("smtp_relay_user", "",
        "user name for AUTH at smtp_relay (never sent to MX hosts); empty: no AUTH"),
    SECRET("smtp_relay_password", "",
           "password for smtp_relay_user; only ever sent over TLS"),
    INT("smtp_connect_timeout_s", 30, 1, 600, "seconds to wait for a TCP connect to an SMTP host"),
    INT("smtp_greeting_timeout_s", 300, 1, 3600,
        "seconds to wait for the server's greeting (RFC 5321 4.5.3.2: 5 min)"),
    INT("smtp_command_timeout_s", 300, 1, 3600,
        "seconds to wait for the reply to EHLO, MAIL, RCPT and other commands (RFC: 5 min)"),
    INT("smtp_data_timeout_s", 0, 0, 3600,
        "seconds to wait for the DATA reply and for each block of the message to go out; 0: "
        "RFC 5321's 2 min and 3 min"),
    INT("smtp_data_done_timeout_s", 600, 1, 7200,
        "seconds to wait for the reply to the message's final dot (RFC: 10 min)"),
    INT("delivery_connections", 4, 1, 1000,
        "SMTP connections a worker opens at most towards one destination"),
    INT("delivery_messages_per_connection", 1000, 1, 100000,
        "messages a connection carries before QUIT and a fresh connection"),
    INT("delivery_connection_rate", 20, 1, 10000,
        "new SMTP connections a second a worker opens towards one destination (burst: "
        "delivery_connections)"),
    INT("delivery_idle_s", 5, 1, 3600,
        "seconds an SMTP connection with nothing to send stays open for the next message "
        "before QUIT"),
    INT("bulk_chunk", 5000, 1, 100000,
        "recipients a bulk send writes per transaction: the first step before the API answers, "
        "the rest in the background, so delivery starts at once and no transaction grows with "
        "the list"),
    INT("delivery_backlog", 2000, 10, 1000000,
        "messages of one recipient domain a worker holds between claiming and recording them; "
        "its mailers then stop claiming until half have been recorded"),
    INT("delivery_max_age_s", 259200, 60, 2592000,
        "a message still deferred this long after it was accepted fails"),
    INT("delivery_lease_s", 600, 5, 86400,
        "a message being sent is re-driven if its worker has not finished it in this time"),
    INT("shaping_rate", 50, 1, 1000000,
        "messages per second towards one destination (MX rollup), shared by all workers"),
    INT("shaping_burst", 100, 1, 10000000, "messages a destination may get at once above its rate"),
    STR("shaping_overrides", "",
        "per-provider budgets keyed by MX host suffix, "
        "suffix=rate/burst[/connections[/messages_per_connection[/connection_rate]]]: "
        "\"google.com=100/200,outlook.com=20/40/2/50/1\" (omitted or 0: the default)"),
    STR("inbound_bind", "127.0.0.1", "address the return-path SMTP listener (bounces) binds"),
    INT("inbound_port", 0, 0, 65535,
        "port of the return-path SMTP listener in each worker; 0 turns it off"),
    {"domains_skip_dns", CONFIG_BOOL, "false", 0, 0, NULL, false,
     "dev only: verifying a domain marks it verified without looking up its DNS records "
     "(`postchi up` turns it on, so a new stack can send at once); never in production"},
    {"webhook_allow_private", CONFIG_BOOL, "false", 0, 0, NULL, false,
     "webhook URLs may point at loopback, private, link-local and other non-public addresses "
     "and localhost (off: refused with a 422, so webhooks cannot reach internal services)"},
    STR("dns_resolver", "",
        "host:port of the DNS server domain verification asks; empty uses /etc/resolv.conf"),
};

#define SETTINGS_COUNT (sizeof s_settings / sizeof s_settings[0])

/* POSTCHI_* variables that are not settings but are ours (tooling, the file
 * path); any name starting with one of these is skipped unless it is a
 * setting. Every other unknown POSTCHI_* is refused so a typo is caught. */
static const char *const s_env_skip[] = {"POSTCHI_CONFIG", "POSTCHI_BIN", "POSTCHI_SOURCE_DIR",
                                         NULL};

#define ENV_PREFIX "POSTCHI_"

/* Room for a user's value quoted back in an error; longer ones end in "...". */
#define QUOTE_MAX 128

typedef struct {
    int64_t num; /* CONFIG_INT value; CONFIG_BOOL 0/1 */
    char *str;   /* CONFIG_STR / CONFIG_ENUM value, owned; never NULL after config_new */
} value_t;

struct config {
    value_t values[SETTINGS_COUNT]; /* indexed like s_settings */
};

/* Index of the setting called name (len bytes, compared without regard to
 * case so POSTCHI_PG_PORT finds pg_port), or -1. */
static int s_find(const char *name, size_t len)
{
    for (size_t i = 0; i < SETTINGS_COUNT; i++)
        if (strncasecmp(s_settings[i].name, name, len) == 0 && s_settings[i].name[len] == '\0')
            return (int)i;
    return -1;
}

/* Index of name for a getter; asking for a setting that does not exist is a
 * programmer error. */
static int s_must_find(const char *name, const char *caller)
{
    int i = s_find(name, strlen(name));
    if (i < 0)
        log_panic("%s: unknown setting '%s'", caller, name);
    return i;
}

static void s_quote(sbuf_t *err, const char *value)
{
    char buf[QUOTE_MAX];
    sbuf_appendf(err, "'%s'", log_printable(buf, sizeof buf, value, strlen(value)));
}

/* Append "w1, w2, ..." for an error message or help line. */
static void s_words(sbuf_t *out, const char *const *words)
{
    for (size_t i = 0; words[i]; i++)
        sbuf_appendf(out, "%s%s", i ? ", " : "", words[i]);
}

/* Index of word in words (case-insensitive), or -1. */
static int s_word_index(const char *const *words, const char *word)
{
    for (size_t i = 0; words[i]; i++)
        if (strcasecmp(words[i], word) == 0)
            return (int)i;
    return -1;
}

int config_parse_bool(const char *word, bool *out)
{
    int i = s_word_index(s_bool_words, word);
    if (i < 0)
        return -1;
    *out = i % 2 == 0;
    return 0;
}

/* The bad-value message: "setting 'name': 'value' <what>". */
static int s_refuse(const setting_t *row, const char *value, const char *what, sbuf_t *err)
{
    if (err) {
        sbuf_appendf(err, "setting '%s': ", row->name);
        s_quote(err, value);
        sbuf_appendf(err, " %s", what);
    }
    return -1;
}

/* Parse value for setting i and store it; on any error append the message to
 * err (which may be NULL) and keep the old value. */
static int s_set(config_t *self, int i, const char *value, sbuf_t *err)
{
    const setting_t *row = &s_settings[i];
    value_t *v = &self->values[i];
    switch (row->type) {
    case CONFIG_INT: {
        /* strtoll alone would take " 12", "12abc" or "": insist on a sign or
         * digit first and nothing after the number. */
        char *end = NULL;
        errno = 0;
        long long n = strtoll(value, &end, 10);
        bool starts = value[0] == '-' || value[0] == '+' || isdigit((unsigned char)value[0]);
        if (!starts || end == value || *end != '\0')
            return s_refuse(row, value, "is not a whole number", err);
        if (errno == ERANGE || n < row->min || n > row->max) {
            /* Only signs and digits got here, so it is safe to print bare. */
            if (err)
                sbuf_appendf(err, "setting '%s': %s is out of range %lld..%lld", row->name, value,
                             (long long)row->min, (long long)row->max);
            return -1;
        }
        v->num = n;
        return 0;
    }
    case CONFIG_BOOL: {
        bool b;
        if (config_parse_bool(value, &b) < 0) {
            if (err) {
                s_refuse(row, value, "is not one of ", err);
                s_words(err, s_bool_words);
            }
            return -1;
        }
        v->num = b;
        return 0;
    }
    case CONFIG_ENUM:
    case CONFIG_STR: {
        const char *keep = value;
        if (row->type == CONFIG_ENUM) {
            int w = s_word_index(row->words, value);
            if (w < 0) {
                if (err) {
                    s_refuse(row, value, "is not one of ", err);
                    s_words(err, row->words);
                }
                return -1;
            }
            keep = row->words[w]; /* store the canonical spelling */
        }
        char *copy = strdup(keep);
        if (!copy) {
            if (err)
                sbuf_appendf(err, "setting '%s': out of memory", row->name);
            return -1;
        }
        free(v->str);
        v->str = copy;
        return 0;
    }
    }
    return -1;
}

config_t *config_new(void)
{
    config_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    sbuf_t *err = sbuf_new(64);
    if (!err) {
        free(self);
        return NULL;
    }
    for (size_t i = 0; i < SETTINGS_COUNT; i++) {
        if (s_set(self, (int)i, s_settings[i].def, err) == 0)
            continue;
        /* A default its own row refuses is a broken table; anything else
         * here is running out of memory. */
        if (strstr(sbuf_data(err), "out of memory") == NULL)
            log_panic("config_new: bad default: %s", sbuf_data(err));
        sbuf_destroy(&err);
        config_destroy(&self);
        return NULL;
    }
    sbuf_destroy(&err);
    return self;
}

void config_destroy(config_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    config_t *self = *self_p;
    for (size_t i = 0; i < SETTINGS_COUNT; i++)
        free(self->values[i].str);
    free(self);
    *self_p = NULL;
}

/* Set the setting called name (len bytes, any case); an unknown name is
 * refused as "unknown setting 'name'" (lower-cased, as in the table). */
static int s_set_named(config_t *self, const char *name, size_t len, const char *value, sbuf_t *err)
{
    int i = s_find(name, len);
    if (i >= 0)
        return s_set(self, i, value, err);
    if (err) {
        char lower[QUOTE_MAX];
        size_t n = len < sizeof lower - 1 ? len : sizeof lower - 1;
        for (size_t k = 0; k < n; k++)
            lower[k] = (char)tolower((unsigned char)name[k]);
        lower[n] = '\0';
        sbuf_append_str(err, "unknown setting ");
        s_quote(err, lower);
    }
    return -1;
}

int config_set(config_t *self, const char *name, const char *value, sbuf_t *err)
{
    if (err)
        sbuf_reset(err);
    return s_set_named(self, name, strlen(name), value, err);
}

static char *s_trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* Only whole-line comments: a '#' inside a value (passwords, DSNs) is data. */
int config_load_file(config_t *self, const char *path, sbuf_t *err)
{
    if (err)
        sbuf_reset(err);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (err)
            sbuf_appendf(err, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    unsigned lineno = 0;
    int rc = 0;
    while (rc == 0 && (got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (strlen(line) != (size_t)got) {
            if (err)
                sbuf_appendf(err, "%s:%u: line holds a NUL byte", path, lineno);
            rc = -1;
            break;
        }
        char *text = s_trim(line);
        if (*text == '\0' || *text == '#')
            continue;
        char *eq = strchr(text, '=');
        if (!eq) {
            if (err) {
                sbuf_appendf(err, "%s:%u: expected 'name = value', got ", path, lineno);
                s_quote(err, text);
            }
            rc = -1;
            break;
        }
        *eq = '\0';
        char *name = s_trim(text);
        char *value = s_trim(eq + 1);
        if (err)
            sbuf_appendf(err, "%s:%u: ", path, lineno);
        rc = s_set_named(self, name, strlen(name), value, err);
        if (rc == 0 && err)
            sbuf_reset(err); /* drop the line prefix again */
    }
    if (rc == 0 && ferror(f)) {
        if (err)
            sbuf_appendf(err, "%s: read error", path);
        rc = -1;
    }
    free(line);
    fclose(f);
    return rc;
}

int config_load_env(config_t *self, char *const *envp, sbuf_t *err)
{
    if (err)
        sbuf_reset(err);
    const size_t plen = strlen(ENV_PREFIX);
    for (size_t e = 0; envp && envp[e]; e++) {
        const char *var = envp[e];
        const char *eq = strchr(var, '=');
        if (!eq || strncmp(var, ENV_PREFIX, plen) != 0)
            continue;
        const char *suffix = var + plen;
        size_t suffixlen = (size_t)(eq - suffix);
        if (s_find(suffix, suffixlen) < 0) {
            bool skip = false;
            for (size_t k = 0; s_env_skip[k] && !skip; k++)
                skip = strncmp(var, s_env_skip[k], strlen(s_env_skip[k])) == 0;
            if (skip)
                continue;
        }
        if (err) {
            char buf[QUOTE_MAX];
            sbuf_appendf(err, "%s: ", log_printable(buf, sizeof buf, var, (size_t)(eq - var)));
        }
        if (s_set_named(self, suffix, suffixlen, eq + 1, err) < 0)
            return -1;
        if (err)
            sbuf_reset(err);
    }
    return 0;
}

/* Value of name in envp, or NULL. */
static const char *s_env_get(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (size_t e = 0; envp && envp[e]; e++)
        if (strncmp(envp[e], name, n) == 0 && envp[e][n] == '=')
            return envp[e] + n + 1;
    return NULL;
}

config_t *config_load(const char *path, char *const *envp, sbuf_t *err)
{
    if (err)
        sbuf_reset(err);
    config_t *self = config_new();
    if (!self) {
        if (err)
            sbuf_append_str(err, "config: out of memory");
        return NULL;
    }
    if (!path) {
        path = s_env_get(envp, "POSTCHI_CONFIG");
        if (path && *path == '\0')
            path = NULL;
    }
    if ((path && config_load_file(self, path, err) < 0) || config_load_env(self, envp, err) < 0)
        config_destroy(&self);
    return self;
}

int64_t config_int(const config_t *self, const char *name)
{
    int i = s_must_find(name, "config_int");
    if (s_settings[i].type != CONFIG_INT)
        log_panic("config_int: setting '%s' is not an int", name);
    return self->values[i].num;
}

const char *config_str(const config_t *self, const char *name)
{
    int i = s_must_find(name, "config_str");
    config_type_t t = s_settings[i].type;
    if (t != CONFIG_STR && t != CONFIG_ENUM)
        log_panic("config_str: setting '%s' is not a string", name);
    return self->values[i].str ? self->values[i].str : "";
}

bool config_bool(const config_t *self, const char *name)
{
    int i = s_must_find(name, "config_bool");
    if (s_settings[i].type != CONFIG_BOOL)
        log_panic("config_bool: setting '%s' is not a bool", name);
    return self->values[i].num != 0;
}

static const char *const s_type_names[] = {
    [CONFIG_INT] = "int", [CONFIG_STR] = "str", [CONFIG_BOOL] = "bool", [CONFIG_ENUM] = "enum"};

void config_print_help(FILE *out)
{
    fprintf(out, "Settings: `name = value` in the config file (POSTCHI_CONFIG names it),\n"
                 "or POSTCHI_<NAME> in the environment, which wins.\n\n");
    sbuf_t *line = sbuf_new(256);
    if (!line)
        return;
    for (size_t i = 0; i < SETTINGS_COUNT; i++) {
        const setting_t *row = &s_settings[i];
        sbuf_reset(line);
        sbuf_appendf(line, "%s (%s, default ", row->name, s_type_names[row->type]);
        if (row->type == CONFIG_STR)
            sbuf_appendf(line, "\"%s\"", row->def);
        else
            sbuf_append_str(line, row->def);
        if (row->type == CONFIG_INT)
            sbuf_appendf(line, ", %lld..%lld", (long long)row->min, (long long)row->max);
        if (row->type == CONFIG_ENUM) {
            sbuf_append_str(line, ", one of ");
            s_words(line, row->words);
        }
        if (row->type == CONFIG_BOOL)
            sbuf_append_str(line, ", true or false");
        if (row->secret)
            sbuf_append_str(line, ", secret");
        fprintf(out, "%s): %s\n", sbuf_data(line), row->help);
    }
    sbuf_destroy(&line);
}

/* Secrets show only whether they are set, never their text. */
void config_print(const config_t *self, FILE *out)
{
    for (size_t i = 0; i < SETTINGS_COUNT; i++) {
        const setting_t *row = &s_settings[i];
        const value_t *v = &self->values[i];
        switch (row->type) {
        case CONFIG_INT:
            fprintf(out, "%s = %lld\n", row->name, (long long)v->num);
            break;
        case CONFIG_BOOL:
            fprintf(out, "%s = %s\n", row->name, v->num ? "true" : "false");
            break;
        case CONFIG_STR:
        case CONFIG_ENUM:
            fprintf(out, "%s = %s\n", row->name, row->secret && v->str[0] ? "********" : v->str);
            break;
        }
    }
}
