/*
 * test_config - the settings table against the spec: every default, every
 * range edge, every kind of refusal with its exact message, the file format,
 * the environment (and that it beats the file), config_load's sources,
 * help and masked printing, and panics on programmer error.
 *
 * s_spec below is written from the documented settings, not copied from
 * config.c, so a drifting row fails here.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "log.h"
#include "sbuf.h"

typedef struct {
    const char *name; /* setting */
    char type;        /* 'i' int, 's' str, 'e' enum */
    const char *def;  /* default as config_print shows it */
    int64_t min, max; /* ints only */
} spec_t;

static const spec_t s_spec[] = {
    {"data_dir", 's', "data", 0, 0},
    {"node_id", 's', "", 0, 0},
    {"log_level", 'e', "info", 0, 0},
    {"broker_endpoint", 's', "tcp://127.0.0.1:5570", 0, 0},
    {"heartbeat_interval_ms", 'i', "1000", 50, 60000},
    {"heartbeat_liveness", 'i', "3", 1, 100},
    {"broker_queue_max", 'i', "10000", 0, 10000000},
    {"broker_queue_ttl_ms", 'i', "5000", 0, 600000},
    {"zmq_hwm", 'i', "100000", 1000, 10000000},
    {"max_frame_bytes", 'i', "1048576", 1024, 67108864},
    {"worker_threads", 'i', "2", 1, 256},
    {"worker_capacity", 'i', "100", 1, 100000},
    {"actor_idle_ms", 'i', "60000", 100, 86400000},
    {"request_timeout_ms", 'i', "5000", 1, 600000},
    {"metrics_bind", 's', "127.0.0.1", 0, 0},
    {"metrics_port", 'i', "0", 0, 65535},
    {"api_bind", 's', "127.0.0.1", 0, 0},
    {"api_port", 'i', "8080", 1, 65535},
    {"pg_dsn", 's', "", 0, 0},
    {"pg_host", 's', "127.0.0.1", 0, 0},
    {"pg_port", 'i', "54329", 1, 65535},
    {"pg_database", 's', "postchi", 0, 0},
    {"pg_user", 's', "postchi", 0, 0},
    {"pg_password", 's', "", 0, 0},
    {"redis_host", 's', "127.0.0.1", 0, 0},
    {"redis_port", 'i', "63790", 1, 65535},
    {"startup_wait_ms", 'i', "0", 0, 600000},
    {"smtp_sink_port", 'i', "2525", 1, 65535},
    {"up_workers", 'i', "2", 1, 64},
    {"up_metrics_port", 'i', "9470", 1, 65535},
    {"up_inbound_port", 'i', "2526", 1, 65535},
    {"smtp_tls", 'e', "opportunistic", 0, 0},
    {"smtp_tls_ca_file", 's', "", 0, 0},
    {"smtp_relay_user", 's', "", 0, 0},
    {"smtp_relay_password", 's', "", 0, 0},
    {"smtp_connect_timeout_s", 'i', "30", 1, 600},
    {"smtp_greeting_timeout_s", 'i', "300", 1, 3600},
    {"smtp_command_timeout_s", 'i', "300", 1, 3600},
    {"smtp_data_timeout_s", 'i', "0", 0, 3600},
    {"smtp_data_done_timeout_s", 'i', "600", 1, 7200},
};

#define SPEC_COUNT (sizeof s_spec / sizeof s_spec[0])

/* Write content to a fresh temporary file; path is filled in. */
static void s_write_file(char path[static 64], const char *content, size_t len)
{
    snprintf(path, 64, "/tmp/test_config.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    close(fd);
}

/* Run fn and collect what it prints (caller frees). A tmpfile rather than
 * open_memstream keeps GCC's dangling-pointer analysis quiet. */
static char *s_print(void (*fn)(const config_t *, FILE *), const config_t *cfg)
{
    FILE *out = tmpfile();
    assert_non_null(out);
    fn(cfg, out);
    long len = ftell(out);
    assert_true(len >= 0);
    rewind(out);
    char *text = calloc(1, (size_t)len + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)len, out), (size_t)len);
    fclose(out);
    return text;
}

static void s_print_help(const config_t *cfg, FILE *out)
{
    (void)cfg;
    config_print_help(out);
}

static void test_defaults(void **state)
{
    (void)state;
    config_t *cfg = config_new();
    assert_non_null(cfg);
    for (size_t i = 0; i < SPEC_COUNT; i++) {
        const spec_t *s = &s_spec[i];
        if (s->type == 'i')
            assert_int_equal(config_int(cfg, s->name), strtoll(s->def, NULL, 10));
        else
            assert_string_equal(config_str(cfg, s->name), s->def);
    }
    config_destroy(&cfg);
    assert_null(cfg);
    config_destroy(&cfg);
    config_destroy(NULL);
}

/* min and max are taken, one past either end is refused with the range in
 * the message, and the refused value does not stick. */
static void test_range_edges(void **state)
{
    (void)state;
    config_t *cfg = config_new();
    sbuf_t *err = sbuf_new(0);
    char value[32], want[160];
    for (size_t i = 0; i < SPEC_COUNT; i++) {
        const spec_t *s = &s_spec[i];
        if (s->type != 'i')
            continue;
        int64_t edges[] = {s->min, s->max};
        for (size_t e = 0; e < 2; e++) {
            snprintf(value, sizeof value, "%lld", (long long)edges[e]);
            assert_int_equal(config_set(cfg, s->name, value, err), 0);
            assert_int_equal(config_int(cfg, s->name), edges[e]);
        }
        int64_t outside[] = {s->min - 1, s->max + 1};
        for (size_t e = 0; e < 2; e++) {
            snprintf(value, sizeof value, "%lld", (long long)outside[e]);
            assert_int_equal(config_set(cfg, s->name, value, err), -1);
            snprintf(want, sizeof want, "setting '%s': %s is out of range %lld..%lld", s->name,
                     value, (long long)s->min, (long long)s->max);
            assert_string_equal(sbuf_data(err), want);
            assert_int_equal(config_int(cfg, s->name), s->max);
        }
    }
    sbuf_destroy(&err);
    config_destroy(&cfg);
}

static void test_set_errors(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *value;
        const char *want; /* the whole message */
    } cases[] = {
        {"heartbeat_interval_ms", "5x",
         "setting 'heartbeat_interval_ms': '5x' is not a whole number"},
        {"heartbeat_interval_ms", "", "setting 'heartbeat_interval_ms': '' is not a whole number"},
        {"heartbeat_interval_ms", " 500",
         "setting 'heartbeat_interval_ms': ' 500' is not a whole number"},
        {"heartbeat_interval_ms", "500 ",
         "setting 'heartbeat_interval_ms': '500 ' is not a whole number"},
        {"heartbeat_interval_ms", "0x100",
         "setting 'heartbeat_interval_ms': '0x100' is not a whole number"},
        {"heartbeat_interval_ms", "1.5",
         "setting 'heartbeat_interval_ms': '1.5' is not a whole number"},
        {"heartbeat_interval_ms", "-",
         "setting 'heartbeat_interval_ms': '-' is not a whole number"},
        {"heartbeat_interval_ms", "70000",
         "setting 'heartbeat_interval_ms': 70000 is out of range 50..60000"},
        {"heartbeat_interval_ms", "-5",
         "setting 'heartbeat_interval_ms': -5 is out of range 50..60000"},
        {"heartbeat_interval_ms", "99999999999999999999",
         "setting 'heartbeat_interval_ms': 99999999999999999999 is out of range 50..60000"},
        {"foo", "1", "unknown setting 'foo'"},
        {"", "1", "unknown setting ''"},
        {"log_level", "loud", "setting 'log_level': 'loud' is not one of debug, info, warn, error"},
        {"log_level", "", "setting 'log_level': '' is not one of debug, info, warn, error"},
        /* a control byte is quoted back escaped, never raw */
        {"log_level", "a\x1b[31m",
         "setting 'log_level': 'a\\x1b[31m' is not one of debug, info, warn, error"},
        {"api_port", "0", "setting 'api_port': 0 is out of range 1..65535"},
        {"smtp_tls", "off",
         "setting 'smtp_tls': 'off' is not one of opportunistic, required, verified"},
        {"smtp_tls", "", "setting 'smtp_tls': '' is not one of opportunistic, required, verified"},
        {"smtp_connect_timeout_s", "0", "setting 'smtp_connect_timeout_s': 0 is out of range 1..600"},
        {"smtp_command_timeout_s", "5m",
         "setting 'smtp_command_timeout_s': '5m' is not a whole number"},
        {"smtp_data_timeout_s", "-1", "setting 'smtp_data_timeout_s': -1 is out of range 0..3600"},
        {"smtp_data_done_timeout_s", "7201",
         "setting 'smtp_data_done_timeout_s': 7201 is out of range 1..7200"},
        {"up_inbound_port", "70000", "setting 'up_inbound_port': 70000 is out of range 1..65535"},
    };
    config_t *cfg = config_new();
    sbuf_t *err = sbuf_new(0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sbuf_append_str(err, "stale "); /* config_set replaces, not appends */
        assert_int_equal(config_set(cfg, cases[i].name, cases[i].value, err), -1);
        assert_string_equal(sbuf_data(err), cases[i].want);
    }
    /* refusals kept the defaults */
    assert_int_equal(config_int(cfg, "heartbeat_interval_ms"), 1000);
    assert_string_equal(config_str(cfg, "log_level"), "info");
    assert_int_equal(config_int(cfg, "api_port"), 8080);
    /* err may be NULL */
    assert_int_equal(config_set(cfg, "foo", "1", NULL), -1);
    assert_int_equal(config_set(cfg, "api_port", "x", NULL), -1);
    sbuf_destroy(&err);
    config_destroy(&cfg);
}

static void test_set_values(void **state)
{
    (void)state;
    config_t *cfg = config_new();
    sbuf_t *err = sbuf_new(0);
    assert_int_equal(config_set(cfg, "log_level", "WARN", err), 0);
    assert_string_equal(config_str(cfg, "log_level"), "warn"); /* canonical spelling */
    assert_int_equal(config_set(cfg, "log_level", "debug", err), 0);
    assert_string_equal(config_str(cfg, "log_level"), "debug");
    assert_int_equal(config_set(cfg, "pg_host", "db.example", err), 0);
    assert_string_equal(config_str(cfg, "pg_host"), "db.example");
    assert_int_equal(config_set(cfg, "pg_host", "", err), 0);
    assert_string_equal(config_str(cfg, "pg_host"), "");
    assert_int_equal(config_set(cfg, "api_port", "+0443", err), 0);
    assert_int_equal(config_int(cfg, "api_port"), 443);
    assert_string_equal(sbuf_data(err), "");
    sbuf_destroy(&err);
    config_destroy(&cfg);
}

static void test_parse_bool(void **state)
{
    (void)state;
    static const struct {
        const char *word;
        int rc;
        bool value;
    } cases[] = {
        {"true", 0, true},   {"yes", 0, true},    {"on", 0, true},  {"1", 0, true},
        {"TRUE", 0, true},   {"false", 0, false}, {"no", 0, false}, {"off", 0, false},
        {"0", 0, false},     {"", -1, false},     {"2", -1, false}, {"maybe", -1, false},
        {"yes ", -1, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool v = !cases[i].value;
        assert_int_equal(config_parse_bool(cases[i].word, &v), cases[i].rc);
        if (cases[i].rc == 0)
            assert_int_equal(v, cases[i].value);
    }
}

static void test_file(void **state)
{
    (void)state;
    static const char text[] = "# a comment\n"
                               "\n"
                               "   # indented comment\n"
                               "heartbeat_interval_ms=250\n"
                               "  api_port   =   9000  \n"
                               "\tpg_host\t=\tdb.local\t\n"
                               "pg_password = a#b=c\n" /* '#' and '=' in a value are data */
                               "log_level = error\r\n"
                               "data_dir =\n"
                               "worker_threads = 4"; /* no final newline */
    char path[64];
    s_write_file(path, text, sizeof text - 1);
    config_t *cfg = config_new();
    sbuf_t *err = sbuf_new(0);
    assert_int_equal(config_load_file(cfg, path, err), 0);
    assert_string_equal(sbuf_data(err), "");
    assert_int_equal(config_int(cfg, "heartbeat_interval_ms"), 250);
    assert_int_equal(config_int(cfg, "api_port"), 9000);
    assert_string_equal(config_str(cfg, "pg_host"), "db.local");
    assert_string_equal(config_str(cfg, "pg_password"), "a#b=c");
    assert_string_equal(config_str(cfg, "log_level"), "error");
    assert_string_equal(config_str(cfg, "data_dir"), "");
    assert_int_equal(config_int(cfg, "worker_threads"), 4);
    assert_int_equal(config_int(cfg, "heartbeat_liveness"), 3); /* untouched */
    unlink(path);
    sbuf_destroy(&err);
    config_destroy(&cfg);
}

static void test_file_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        size_t len;
        const char *want; /* after "<path>:" */
    } cases[] = {
#define CASE(t, w) {t, sizeof t - 1, w}
        CASE("api_port = 1\n# ok\nfoo = 1\n", "3: unknown setting 'foo'"),
        CASE("\nheartbeat_interval_ms = 5x\n",
             "2: setting 'heartbeat_interval_ms': '5x' is not a whole number"),
        CASE("heartbeat_interval_ms = 70000\n",
             "1: setting 'heartbeat_interval_ms': 70000 is out of range 50..60000"),
        CASE("log_level = loud\n",
             "1: setting 'log_level': 'loud' is not one of debug, info, warn, error"),
        CASE("api_port 9000\n", "1: expected 'name = value', got 'api_port 9000'"),
        CASE(" = 9000\n", "1: unknown setting ''"),
        CASE("api_port = 1\napi_\0port = 2\n", "2: line holds a NUL byte"),
#undef CASE
    };
    sbuf_t *err = sbuf_new(0);
    char want[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[64];
        s_write_file(path, cases[i].text, cases[i].len);
        config_t *cfg = config_new();
        assert_int_equal(config_load_file(cfg, path, err), -1);
        snprintf(want, sizeof want, "%s:%s", path, cases[i].want);
        assert_string_equal(sbuf_data(err), want);
        config_destroy(&cfg);
        unlink(path);
    }

    config_t *cfg = config_new();
    assert_int_equal(config_load_file(cfg, "/nonexistent/postchi.conf", err), -1);
    assert_string_equal(sbuf_data(err),
                        "/nonexistent/postchi.conf: cannot open: No such file or directory");
    sbuf_destroy(&err);
    config_destroy(&cfg);
}

static void test_env(void **state)
{
    (void)state;
    char *envp[] = {
        "PATH=/usr/bin",
        "POSTCHI_HEARTBEAT_INTERVAL_MS=2000",
        "POSTCHI_LOG_LEVEL=debug",
        "POSTCHI_CONFIG=/does/not/matter",
        "POSTCHI_BIN=/usr/local/bin/postchi",
        "POSTCHI_BIN_DIR=/x",
        "POSTCHI_SOURCE_DIR=/src",
        "POSTCHI_NO_EQUALS_SIGN",
        "POSTCHI_PG_PASSWORD=",
        "NOT_POSTCHI_FOO=1",
        NULL,
    };
    config_t *cfg = config_new();
    sbuf_t *err = sbuf_new(0);
    config_set(cfg, "pg_password", "before", err);
    assert_int_equal(config_load_env(cfg, envp, err), 0);
    assert_string_equal(sbuf_data(err), "");
    assert_int_equal(config_int(cfg, "heartbeat_interval_ms"), 2000);
    assert_string_equal(config_str(cfg, "log_level"), "debug");
    assert_string_equal(config_str(cfg, "pg_password"), "");
    assert_int_equal(config_load_env(cfg, NULL, err), 0);

    static const struct {
        const char *var;
        const char *want;
    } bad[] = {
        {"POSTCHI_FOO=1", "POSTCHI_FOO: unknown setting 'foo'"},
        {"POSTCHI_=1", "POSTCHI_: unknown setting ''"},
        {"POSTCHI_API_PORT=0", "POSTCHI_API_PORT: setting 'api_port': 0 is out of range 1..65535"},
        {"POSTCHI_WORKER_THREADS=two",
         "POSTCHI_WORKER_THREADS: setting 'worker_threads': 'two' is not a whole number"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *one[] = {"POSTCHI_ZMQ_HWM=5000", (char *)bad[i].var, NULL};
        assert_int_equal(config_load_env(cfg, one, err), -1);
        assert_string_equal(sbuf_data(err), bad[i].want);
    }
    sbuf_destroy(&err);
    config_destroy(&cfg);
}

/* Defaults, then the file, then the environment: env wins over the file,
 * the file over defaults. */
static void test_load_order(void **state)
{
    (void)state;
    static const char text[] = "heartbeat_interval_ms = 3000\napi_port = 9000\n";
    char path[64], var[96];
    s_write_file(path, text, sizeof text - 1);
    snprintf(var, sizeof var, "POSTCHI_CONFIG=%s", path);
    sbuf_t *err = sbuf_new(0);

    char *env_file[] = {var, "POSTCHI_HEARTBEAT_INTERVAL_MS=4000", NULL};
    config_t *cfg = config_load(NULL, env_file, err);
    assert_non_null(cfg);
    assert_int_equal(config_int(cfg, "heartbeat_interval_ms"), 4000);
    assert_int_equal(config_int(cfg, "api_port"), 9000);
    assert_int_equal(config_int(cfg, "pg_port"), 54329);
    config_destroy(&cfg);

    /* an explicit path is used instead of POSTCHI_CONFIG */
    char *env_missing[] = {"POSTCHI_CONFIG=/nonexistent/x.conf", NULL};
    cfg = config_load(path, env_missing, err);
    assert_non_null(cfg);
    assert_int_equal(config_int(cfg, "api_port"), 9000);
    config_destroy(&cfg);

    /* no file named at all is fine; so is an empty POSTCHI_CONFIG */
    char *env_empty[] = {"POSTCHI_CONFIG=", NULL};
    cfg = config_load(NULL, env_empty, err);
    assert_non_null(cfg);
    assert_int_equal(config_int(cfg, "api_port"), 8080);
    config_destroy(&cfg);
    cfg = config_load(NULL, NULL, err);
    assert_non_null(cfg);
    config_destroy(&cfg);

    /* a named file that is not there is an error, from either source */
    assert_null(config_load(NULL, env_missing, err));
    assert_non_null(strstr(sbuf_data(err), "/nonexistent/x.conf: cannot open"));
    assert_null(config_load("/nonexistent/y.conf", NULL, err));
    assert_non_null(strstr(sbuf_data(err), "/nonexistent/y.conf: cannot open"));

    /* a bad value anywhere stops the load */
    char *env_bad[] = {var, "POSTCHI_LOG_LEVEL=loud", NULL};
    assert_null(config_load(NULL, env_bad, err));
    assert_string_equal(sbuf_data(err), "POSTCHI_LOG_LEVEL: setting 'log_level': 'loud' is not one "
                                        "of debug, info, warn, error");
    unlink(path);
    sbuf_destroy(&err);
}

static void test_print_help(void **state)
{
    (void)state;
    char *text = s_print(s_print_help, NULL);
    for (size_t i = 0; i < SPEC_COUNT; i++) {
        const spec_t *s = &s_spec[i];
        char head[64], range[96];
        snprintf(head, sizeof head, "\n%s (", s->name);
        const char *line = strstr(text, head);
        assert_non_null(line);
        if (s->type == 'i') {
            snprintf(range, sizeof range, "default %s, %lld..%lld)", s->def, (long long)s->min,
                     (long long)s->max);
            const char *hit = strstr(line, range);
            assert_true(hit && hit < strchr(line + 1, '\n'));
        }
    }
    assert_non_null(
        strstr(text, "log_level (enum, default info, one of debug, info, warn, error)"));
    assert_non_null(strstr(text, "pg_password (str, default \"\", secret): PostgreSQL password\n"));
    assert_non_null(strstr(text, "POSTCHI_<NAME>"));
    free(text);
}

static void test_print_masks_secrets(void **state)
{
    (void)state;
    config_t *cfg = config_new();
    char *text = s_print(config_print, cfg);
    char want[160];
    /* every setting, one `name = value` line each; "\n" + text so the first
     * line is found like the others */
    sbuf_t *all = sbuf_new(0);
    sbuf_appendf(all, "\n%s", text);
    for (size_t i = 0; i < SPEC_COUNT; i++) {
        snprintf(want, sizeof want, "\n%s = %s\n", s_spec[i].name, s_spec[i].def);
        assert_non_null(strstr(sbuf_data(all), want));
    }
    sbuf_destroy(&all);
    free(text);

    config_set(cfg, "pg_password", "hunter2", NULL);
    config_set(cfg, "pg_dsn", "host=x password=sekrit", NULL);
    config_set(cfg, "pg_user", "alice", NULL);
    config_set(cfg, "smtp_relay_password", "relaypw9", NULL);
    text = s_print(config_print, cfg);
    assert_null(strstr(text, "relaypw9"));
    assert_non_null(strstr(text, "\nsmtp_relay_password = ********\n"));
    assert_null(strstr(text, "hunter2"));
    assert_null(strstr(text, "sekrit"));
    assert_non_null(strstr(text, "\npg_password = ********\n"));
    assert_non_null(strstr(text, "\npg_dsn = ********\n"));
    assert_non_null(strstr(text, "\npg_user = alice\n"));
    free(text);
    config_destroy(&cfg);
}

static void s_bad_name(void)
{
    config_t *cfg = config_new();
    (void)config_int(cfg, "no_such_setting");
}

static void s_wrong_type(void)
{
    config_t *cfg = config_new();
    (void)config_int(cfg, "pg_host");
}

static void s_not_bool(void)
{
    config_t *cfg = config_new();
    (void)config_bool(cfg, "api_port");
}

/* Reading a setting that is not in the table, or as the wrong type, is a
 * programmer error: the process aborts (in a child here). */
static void test_getter_panics(void **state)
{
    (void)state;
    void (*cases[])(void) = {s_bad_name, s_wrong_type, s_not_bool};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            signal(SIGABRT, SIG_DFL);
            int devnull = open("/dev/null", O_WRONLY);
            dup2(devnull, STDERR_FILENO);
            cases[i]();
            _exit(0);
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGABRT);
    }
}

int main(void)
{
    log_init("test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_range_edges),
        cmocka_unit_test(test_set_errors),
        cmocka_unit_test(test_set_values),
        cmocka_unit_test(test_parse_bool),
        cmocka_unit_test(test_file),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_load_order),
        cmocka_unit_test(test_print_help),
        cmocka_unit_test(test_print_masks_secrets),
        cmocka_unit_test(test_getter_panics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
