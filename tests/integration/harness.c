/*
 * harness - real processes, real servers, no leftovers (see harness.h).
 *
 * Every spawned process gets its own process group; the group ids are kept
 * in a fixed table that the SIGINT/SIGTERM/SIGABRT handler can walk with
 * only async-signal-safe calls (killpg), and that atexit walks too. Databases
 * made by harness_create_database are dropped at exit (WITH (FORCE), so a
 * server still connected cannot keep them alive).
 *
 * Logs: <build>/test-logs/<label>-<pid>.log, where <build> is the parent of
 * the directory holding SERVERS_ENV (the fixture lives in <build>/test-servers).
 * The path of each log is printed on stderr when the process starts, so a
 * failing test's ctest output says where to look.
 *
 * What can go wrong: more than HARNESS_MAX_PROCS live processes (spawn
 * fails), a missing SERVERS_ENV (harness_server returns NULL; tests should
 * skip or fail with that message).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "sbuf.h"

#include "harness.h"

extern char **environ;

/* Live process groups the signal handler may have to kill. */
#define HARNESS_MAX_PROCS 256
/* Ports handed out by harness_free_port in one test. */
#define HARNESS_MAX_PORTS 1024
/* Databases made by harness_create_database in one test. */
#define HARNESS_MAX_DBS 64
/* Socket timeouts of harness_http_get. */
#define HTTP_TIMEOUT_MS 5000

struct harness_proc {
    pid_t pid;      /* also its process group id */
    char *label;    /* what the test called it */
    char *log_path; /* where its stdout/stderr go */
    int slot;       /* index in s_groups */
    int reaped;     /* harness_alive saw it exit */
    int status;     /* its decoded exit status then */
};

/* Process groups to kill at exit or on a signal; 0 = free slot. Written only
 * by the main thread, read by the handler. */
static volatile pid_t s_groups[HARNESS_MAX_PROCS];
static int s_ports[HARNESS_MAX_PORTS];
static int s_nports;
static char *s_dbs[HARNESS_MAX_DBS];
static int s_ndbs;
static int s_initialised;

/* KEY=VALUE pairs from SERVERS_ENV, loaded once. */
static char **s_env_keys;
static char **s_env_values;
static int s_env_count;
static int s_env_loaded;
/* The strings harness_server_env last returned. */
#define SERVER_ENV_MAX 8
static char *s_server_env[SERVER_ENV_MAX + 1];

/* ------------------------------------------------------------- cleanup */

static void s_kill_groups(void)
{
    for (int i = 0; i < HARNESS_MAX_PROCS; i++)
        if (s_groups[i] > 0)
            killpg(s_groups[i], SIGKILL);
}

static void s_on_signal(int sig)
{
    s_kill_groups();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void s_drop_databases(void)
{
    if (s_ndbs == 0)
        return;
    const char *host = harness_server("PG_HOST"), *port = harness_server("PG_PORT");
    const char *user = harness_server("PG_USER"), *dbname = harness_server("PG_DATABASE");
    sbuf_t *ci = sbuf_new(128), *sql = sbuf_new(128), *err = sbuf_new(128);
    db_t *db = NULL;
    if (ci && sql && err && host && port && user && dbname &&
        sbuf_appendf(ci, "host=%s port=%s user=%s dbname=%s", host, port, user, dbname) == 0)
        db = db_connect(sbuf_data(ci), 0, err);
    for (int i = 0; i < s_ndbs; i++) {
        if (db) {
            sbuf_reset(sql);
            sbuf_reset(err);
            if (sbuf_appendf(sql, "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", s_dbs[i]) == 0 &&
                db_exec(db, sbuf_data(sql), 0, NULL, err) == -1)
                fprintf(stderr, "harness: cannot drop database %s: %s\n", s_dbs[i],
                        sbuf_data(err));
        }
        free(s_dbs[i]);
    }
    s_ndbs = 0;
    db_destroy(&db);
    sbuf_destroy(&ci);
    sbuf_destroy(&sql);
    sbuf_destroy(&err);
}

static void s_free_env(void)
{
    for (int i = 0; i < s_env_count; i++) {
        free(s_env_keys[i]);
        free(s_env_values[i]);
    }
    free(s_env_keys);
    free(s_env_values);
    s_env_keys = s_env_values = NULL;
    s_env_count = 0;
}

static void s_at_exit(void)
{
    for (int i = 0; i < HARNESS_MAX_PROCS; i++) {
        pid_t pg = s_groups[i];
        if (pg > 0) {
            killpg(pg, SIGKILL);
            waitpid(pg, NULL, 0);
            s_groups[i] = 0;
        }
    }
    s_drop_databases();
    for (int i = 0; i < SERVER_ENV_MAX; i++) {
        free(s_server_env[i]);
        s_server_env[i] = NULL;
    }
    s_free_env();
}

static void s_init(void)
{
    if (s_initialised)
        return;
    s_initialised = 1;
    atexit(s_at_exit);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGABRT, &sa, NULL);
}

/* ------------------------------------------------------------- servers */

static const char *s_servers_env_path(void)
{
    const char *p = getenv("SERVERS_ENV");
    return p && *p ? p : SERVERS_ENV;
}

static void s_load_env(void)
{
    if (s_env_loaded)
        return;
    s_env_loaded = 1;
    s_init();
    FILE *f = fopen(s_servers_env_path(), "r");
    if (!f)
        return;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        char *eq = strchr(line, '=');
        if (!eq || line[0] == '#')
            continue;
        char **k = realloc(s_env_keys, (size_t)(s_env_count + 1) * sizeof *k);
        if (k)
            s_env_keys = k;
        char **v = realloc(s_env_values, (size_t)(s_env_count + 1) * sizeof *v);
        if (v)
            s_env_values = v;
        if (!k || !v)
            break;
        s_env_keys[s_env_count] = strndup(line, (size_t)(eq - line));
        s_env_values[s_env_count] = strdup(eq + 1);
        if (!s_env_keys[s_env_count] || !s_env_values[s_env_count]) {
            free(s_env_keys[s_env_count]);
            free(s_env_values[s_env_count]);
            break;
        }
        s_env_count++;
    }
    free(line);
    fclose(f);
}

const char *harness_server(const char *key)
{
    s_load_env();
    for (int i = 0; i < s_env_count; i++)
        if (strcmp(s_env_keys[i], key) == 0)
            return s_env_values[i];
    return NULL;
}

char *const *harness_server_env(const char *database)
{
    static const char *const map[][2] = {
        {"POSTCHI_PG_HOST", "PG_HOST"},       {"POSTCHI_PG_PORT", "PG_PORT"},
        {"POSTCHI_PG_USER", "PG_USER"},       {"POSTCHI_PG_DATABASE", "PG_DATABASE"},
        {"POSTCHI_REDIS_HOST", "REDIS_HOST"}, {"POSTCHI_REDIS_PORT", "REDIS_PORT"},
    };
    enum { N = sizeof map / sizeof map[0] };
    _Static_assert(N <= SERVER_ENV_MAX, "grow SERVER_ENV_MAX");
    char **strings = s_server_env;
    for (int i = 0; i < N; i++) {
        free(strings[i]);
        strings[i] = NULL;
    }
    int out = 0;
    for (int i = 0; i < N; i++) {
        const char *value = harness_server(map[i][1]);
        if (database && strcmp(map[i][1], "PG_DATABASE") == 0)
            value = database;
        if (!value)
            continue;
        size_t len = strlen(map[i][0]) + 1 + strlen(value) + 1;
        char *s = malloc(len);
        if (!s)
            continue;
        snprintf(s, len, "%s=%s", map[i][0], value);
        strings[out++] = s;
    }
    strings[out] = NULL;
    return strings;
}

int harness_free_port(void)
{
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        struct sockaddr_in sa = {.sin_family = AF_INET};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof sa;
        int port = -1;
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
            getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
            port = ntohs(sa.sin_port);
        close(fd);
        if (port <= 0)
            return -1;
        int seen = 0;
        for (int i = 0; i < s_nports && !seen; i++)
            seen = s_ports[i] == port;
        if (seen)
            continue;
        if (s_nports < HARNESS_MAX_PORTS)
            s_ports[s_nports++] = port;
        return port;
    }
    return -1;
}

/* ------------------------------------------------------------ databases */

int harness_create_database(char *name, size_t size)
{
    static int counter;
    if (size < 64 || s_ndbs >= HARNESS_MAX_DBS)
        return -1;
    s_init();
    /* Only [a-z0-9_] reach the SQL text, so quoting cannot be escaped. */
    char base[40];
    size_t j = 0;
    for (const char *p = program_invocation_short_name; *p && j < sizeof base - 1; p++) {
        char c = (char)tolower((unsigned char)*p);
        base[j++] = (isalnum((unsigned char)c) && isascii(c)) ? c : '_';
    }
    base[j] = '\0';
    snprintf(name, size, "t_%s_%ld_%d", base, (long)getpid(), counter++);

    const char *host = harness_server("PG_HOST"), *port = harness_server("PG_PORT");
    const char *user = harness_server("PG_USER"), *dbname = harness_server("PG_DATABASE");
    if (!host || !port || !user || !dbname) {
        fprintf(stderr, "harness: %s has no PostgreSQL (did the servers fixture run?)\n",
                s_servers_env_path());
        return -1;
    }
    sbuf_t *ci = sbuf_new(128), *sql = sbuf_new(128), *err = sbuf_new(128);
    db_t *db = NULL;
    int rc = -1;
    if (ci && sql && err &&
        sbuf_appendf(ci, "host=%s port=%s user=%s dbname=%s", host, port, user, dbname) == 0 &&
        sbuf_appendf(sql, "CREATE DATABASE \"%s\"", name) == 0 &&
        (db = db_connect(sbuf_data(ci), 5000, err)) != NULL &&
        db_exec(db, sbuf_data(sql), 0, NULL, err) == 0) {
        s_dbs[s_ndbs] = strdup(name);
        if (s_dbs[s_ndbs])
            s_ndbs++;
        rc = 0;
    }
    if (rc == -1)
        fprintf(stderr, "harness: cannot create database %s: %s\n", name,
                err ? sbuf_data(err) : "out of memory");
    db_destroy(&db);
    sbuf_destroy(&ci);
    sbuf_destroy(&sql);
    sbuf_destroy(&err);
    return rc;
}

/* ------------------------------------------------------------ processes */

/* <build>/test-logs, from SERVERS_ENV = <build>/test-servers/servers.env.
 * Caller frees. */
static char *s_log_dir(void)
{
    char *path = strdup(s_servers_env_path());
    if (!path)
        return NULL;
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(path, '/');
        if (!slash) {
            free(path);
            return strdup("test-logs");
        }
        *slash = '\0';
    }
    sbuf_t *b = sbuf_new(strlen(path) + 16);
    char *out = NULL;
    if (b && sbuf_appendf(b, "%s/test-logs", path) == 0)
        out = sbuf_detach(b, NULL);
    sbuf_destroy(&b);
    free(path);
    return out;
}

/* environ with env's KEY=VALUE entries replacing or added. Caller frees
 * the array only (the strings are borrowed). */
static char **s_merge_env(char *const env[])
{
    size_t n = 0, m = 0;
    while (environ[n])
        n++;
    while (env && env[m])
        m++;
    char **out = calloc(n + m + 1, sizeof *out);
    if (!out)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t keylen = strcspn(environ[i], "=");
        int replaced = 0;
        for (size_t j = 0; j < m && !replaced; j++)
            replaced = strncmp(env[j], environ[i], keylen) == 0 && env[j][keylen] == '=';
        if (!replaced)
            out[k++] = environ[i];
    }
    for (size_t j = 0; j < m; j++)
        out[k++] = env[j];
    out[k] = NULL;
    return out;
}

static void s_proc_free(harness_proc_t *p)
{
    if (!p)
        return;
    if (p->slot >= 0)
        s_groups[p->slot] = 0;
    free(p->label);
    free(p->log_path);
    free(p);
}

harness_proc_t *harness_spawn(const char *label, char *const argv[], char *const env[])
{
    s_init();
    int slot = -1;
    for (int i = 0; i < HARNESS_MAX_PROCS && slot < 0; i++)
        if (s_groups[i] == 0)
            slot = i;
    char *dir = s_log_dir();
    char **envp = s_merge_env(env);
    harness_proc_t *p = calloc(1, sizeof *p);
    if (slot < 0 || !dir || !envp || !p || (mkdir(dir, 0755) == -1 && errno != EEXIST)) {
        fprintf(stderr, "harness: cannot spawn %s: %s\n", label,
                slot < 0 ? "too many processes" : strerror(errno));
        free(dir);
        free(envp);
        free(p);
        return NULL;
    }
    p->slot = -1;
    p->label = strdup(label);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s-%ld.log", dir, label, (long)getpid());
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int null = open("/dev/null", O_RDONLY);
        if (fd < 0 || null < 0)
            _exit(126);
        dup2(null, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        close_range(3, ~0U, 0);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGABRT, SIG_DFL);
        execve(argv[0], argv, envp);
        dprintf(2, "harness: cannot exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    free(envp);
    if (pid < 0) {
        fprintf(stderr, "harness: fork: %s\n", strerror(errno));
        free(dir);
        s_proc_free(p);
        return NULL;
    }
    /* Both sides set the group, so no kill can race the child's setpgid. */
    setpgid(pid, pid);
    p->pid = pid;
    p->slot = slot;
    s_groups[slot] = pid;
    sbuf_t *b = sbuf_new(256);
    if (b && sbuf_appendf(b, "%s/%s-%ld.log", dir, label, (long)pid) == 0)
        p->log_path = sbuf_detach(b, NULL);
    sbuf_destroy(&b);
    free(dir);
    fprintf(stderr, "harness: started %s pid %ld, log %s\n", label, (long)pid,
            p->log_path ? p->log_path : "?");
    return p;
}

harness_proc_t *harness_spawn_postchi(const char *label, const char *subcommand,
                                      char *const env[])
{
    const char *bin = getenv("POSTCHI_BIN");
    char *argv[] = {(char *)(bin && *bin ? bin : POSTCHI_BIN), (char *)subcommand, NULL};
    return harness_spawn(label, argv, env);
}

pid_t harness_pid(const harness_proc_t *p)
{
    return p ? p->pid : -1;
}

const char *harness_log_path(const harness_proc_t *p)
{
    return p && p->log_path ? p->log_path : "";
}

static int s_decode(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

int harness_stop(harness_proc_t *p, int sig, int timeout_ms)
{
    if (!p)
        return -1;
    if (p->reaped) {
        /* Its pid (and group id) may belong to someone else by now. */
        int rc = p->status;
        s_proc_free(p);
        return rc;
    }
    kill(p->pid, sig);
    int64_t deadline = harness_now_ms() + timeout_ms;
    int status = 0;
    pid_t r;
    while ((r = waitpid(p->pid, &status, WNOHANG)) == 0 && harness_now_ms() < deadline) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    int rc;
    if (r == p->pid) {
        rc = s_decode(status);
    } else if (r == 0) {
        fprintf(stderr, "harness: %s (pid %ld) ignored signal %d for %d ms: SIGKILL (log %s)\n",
                p->label, (long)p->pid, sig, timeout_ms, harness_log_path(p));
        killpg(p->pid, SIGKILL);
        rc = waitpid(p->pid, &status, 0) == p->pid ? s_decode(status) : -1;
    } else {
        rc = -1;
    }
    /* Whatever the process started in its group goes with it. */
    killpg(p->pid, SIGKILL);
    s_proc_free(p);
    return rc;
}

void harness_kill9(harness_proc_t *p)
{
    if (!p)
        return;
    if (!p->reaped) {
        killpg(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
    }
    s_proc_free(p);
}

int harness_alive(harness_proc_t *p)
{
    if (!p || p->reaped)
        return 0;
    int status;
    pid_t r = waitpid(p->pid, &status, WNOHANG);
    if (r == 0)
        return 1;
    if (r == p->pid) {
        p->reaped = 1;
        p->status = s_decode(status);
        fprintf(stderr, "harness: %s (pid %ld) exited with status %d, log %s\n", p->label,
                (long)p->pid, p->status, harness_log_path(p));
    }
    return 0;
}

/* ----------------------------------------------------------------- HTTP */

int harness_http_get(int port, const char *path, sbuf_t *body)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {HTTP_TIMEOUT_MS / 1000, (HTTP_TIMEOUT_MS % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sbuf_t *req = sbuf_new(128), *resp = sbuf_new(4096);
    int status = -1;
    if (!req || !resp || connect(fd, (struct sockaddr *)&sa, sizeof sa) == -1 ||
        sbuf_appendf(req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n",
                     path, port) == -1)
        goto done;
    for (size_t off = 0; off < sbuf_len(req);) {
        ssize_t n = send(fd, sbuf_data(req) + off, sbuf_len(req) - off, MSG_NOSIGNAL);
        if (n <= 0)
            goto done;
        off += (size_t)n;
    }
    char chunk[4096];
    ssize_t n;
    while ((n = recv(fd, chunk, sizeof chunk, 0)) > 0)
        if (sbuf_append(resp, chunk, (size_t)n) == -1)
            goto done;
    if (n < 0)
        goto done; /* timeout or reset: an incomplete answer is no answer */
    int code;
    if (sscanf(sbuf_data(resp), "HTTP/%*d.%*d %3d", &code) != 1)
        goto done;
    const char *sep = strstr(sbuf_data(resp), "\r\n\r\n");
    if (body && sep) {
        size_t start = (size_t)(sep + 4 - sbuf_data(resp));
        if (sbuf_append(body, sbuf_data(resp) + start, sbuf_len(resp) - start) == -1)
            goto done;
    }
    status = code;
done:
    close(fd);
    sbuf_destroy(&req);
    sbuf_destroy(&resp);
    return status;
}

int harness_wait_http(int port, const char *path, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    for (;;) {
        if (harness_http_get(port, path, NULL) == 200)
            return 0;
        if (harness_now_ms() >= deadline)
            return -1;
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int64_t harness_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
