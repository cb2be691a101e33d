/*
 * devstack - `postchi up` / `postchi down` / `postchi migrate`.
 *
 * up builds a complete local Postchi under one data directory:
 *   data_dir/pg     PostgreSQL cluster (initdb on first run)
 *   data_dir/redis  Redis working dir (no persistence: Redis holds only
 *                   rebuildable state)
 *   data_dir/mail   every mail smtp-sink receives, one file per message
 *   data_dir/run    pid files (and PostgreSQL's Unix socket)
 *   data_dir/log    one log file per process
 * then applies the migrations and, unless --services-only, starts the broker,
 * up_workers workers and the API node from this same binary. Each step first
 * checks whether its process already runs (pid file, kill(pid, 0) and
 * /proc/<pid>/cmdline naming the expected program), so a second `up` reuses
 * everything and only starts what is missing.
 *
 * down reads data_dir/run/\*.pid, stops in reverse start order only those
 * processes whose command line still names what up started (a recycled pid is
 * left alone), then stops PostgreSQL with `pg_ctl stop -m fast`.
 *
 * What can go wrong: a missing tool (named with its Debian package), a port
 * already taken (the child exits and its log path is reported), a data dir
 * the `postgres` user cannot reach when we run as root (PostgreSQL refuses to
 * run as root, so initdb/pg_ctl run as `postgres`). On failure up leaves what
 * it did start running with pid files in place, so `postchi down` stops it.
 *
 * Security: every server listens on 127.0.0.1 only and PostgreSQL uses trust
 * authentication; this is a developer stack, not a deployment.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "db.h"
#include "log.h"
#include "migrate.h"
#include "sbuf.h"

#include "devstack.h"

extern char **environ;

/* How long a started child must survive to count as started. */
#define CHILD_SETTLE_MS 300
/* How long a server gets to accept TCP connections after it started. */
#define SERVER_WAIT_MS 15000
/* down: SIGTERM, then this long before SIGKILL. */
#define STOP_GRACE_MS 10000

typedef struct {
    const config_t *cfg; /* settings (not owned) */
    char *data_dir;      /* absolute data directory */
    char *self_exe;      /* this binary's path, to start the mesh from */
    char *pg_bin;        /* newest /usr/lib/postgresql/N/bin, or NULL */
    bool services_only;  /* --services-only: no broker/workers/api */
    bool no_sync;        /* --no-sync: initdb --no-sync, fsync=off (tests) */
    bool data_dir_flag;  /* data dir came from --data-dir */
    bool root;           /* running as uid 0: drop to postgres / nobody */
    uid_t pg_uid;        /* the postgres user when root */
    gid_t pg_gid;        /* its group */
    uid_t nobody_uid;    /* smtp-sink's user when root */
    gid_t nobody_gid;    /* its group */
} up_t;

/* What a pid file in data_dir/run stands for: which program must own the
 * pid, and in which order down stops it (lower first). */
typedef struct {
    const char *prefix;     /* pid file name without .pid ("worker-" matches worker-N) */
    bool exact;             /* prefix must be the whole name */
    const char *program;    /* basename of argv[0]; NULL = this binary */
    const char *subcommand; /* argv[1] for postchi processes, else NULL */
    int stop_rank;          /* down order */
} owned_t;

static const owned_t s_owned[] = {
    {"api", true, NULL, "api", 0},
    {"worker-", false, NULL, "worker", 1},
    {"broker", true, NULL, "broker", 2},
    {"smtp-sink", true, "smtp-sink", NULL, 3},
    {"redis", true, "redis-server", NULL, 4},
};

/* ---------------------------------------------------------------- helpers */

/* printf into a fresh heap string; NULL only when out of memory. */
static char *s_strf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *s_strf(const char *fmt, ...)
{
    sbuf_t *b = sbuf_new(64);
    if (!b)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    int rc = sbuf_vappendf(b, fmt, ap);
    va_end(ap);
    char *out = rc == 0 ? sbuf_detach(b, NULL) : NULL;
    sbuf_destroy(&b);
    return out;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool s_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* First executable name in $PATH, /usr/sbin, /sbin (smtp-sink lives in
 * /usr/sbin, often missing from a user's PATH). Caller frees; NULL if none. */
static char *s_which(const char *name)
{
    const char *env = getenv("PATH");
    char *path = s_strf("%s:/usr/sbin:/sbin:/usr/bin:/bin", env ? env : "");
    if (!path)
        return NULL;
    char *found = NULL;
    char *save = NULL;
    for (char *dir = strtok_r(path, ":", &save); dir && !found; dir = strtok_r(NULL, ":", &save)) {
        char *cand = s_strf("%s/%s", dir, name);
        if (cand && access(cand, X_OK) == 0)
            found = cand;
        else
            free(cand);
    }
    free(path);
    return found;
}

/* Newest PostgreSQL server bin dir (Debian installs them side by side under
 * /usr/lib/postgresql/<major>/bin). Caller frees; NULL if none. */
static char *s_find_pg_bin(void)
{
    glob_t g;
    if (glob("/usr/lib/postgresql/*/bin/initdb", 0, NULL, &g) != 0)
        return NULL;
    const char *best = NULL;
    long best_ver = -1;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        long ver = strtol(g.gl_pathv[i] + strlen("/usr/lib/postgresql/"), NULL, 10);
        if (ver > best_ver) {
            best_ver = ver;
            best = g.gl_pathv[i];
        }
    }
    char *out = best ? strndup(best, strlen(best) - strlen("/initdb")) : NULL;
    globfree(&g);
    return out;
}

/* mkdir that accepts an existing directory; -1 with the reason logged. */
static int s_mkdir(const char *path, mode_t mode)
{
    if (mkdir(path, mode) == 0 || errno == EEXIST)
        return 0;
    log_error("cannot create directory %s: %s", path, strerror(errno));
    return -1;
}

/* mkdir -p, for a user-given data dir whose parents may not exist yet. */
static int s_mkdir_p(const char *path, mode_t mode)
{
    char *copy = strdup(path);
    if (!copy)
        return -1;
    int rc = 0;
    for (char *p = copy + 1; *p && rc == 0; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(copy, 0755) == -1 && errno != EEXIST) {
            log_error("cannot create directory %s: %s", copy, strerror(errno));
            rc = -1;
        }
        *p = '/';
    }
    free(copy);
    return rc == 0 ? s_mkdir(path, mode) : -1;
}

/* chown when root (the directory must belong to the user who writes it). */
static int s_chown(const up_t *st, const char *path, uid_t uid, gid_t gid)
{
    if (!st->root || chown(path, uid, gid) == 0)
        return 0;
    log_error("cannot chown %s: %s", path, strerror(errno));
    return -1;
}

/* In a forked child: become uid/gid (when root), stdin from /dev/null,
 * stdout+stderr appended to out_path (or kept), every other fd closed.
 * Only returns on failure. */
static void s_child_setup(const up_t *st, bool as_postgres, const char *out_path)
{
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) {
        dup2(null, 0);
        close(null);
    }
    if (out_path) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
    }
    close_range(3, ~0U, 0);
    if (as_postgres && st->root) {
        if (setgroups(0, NULL) == -1 || setgid(st->pg_gid) == -1 || setuid(st->pg_uid) == -1) {
            fprintf(stderr, "cannot become user postgres: %s\n", strerror(errno));
            _exit(126);
        }
        setenv("HOME", "/var/lib/postgresql", 1);
        setenv("USER", "postgres", 1);
        setenv("LOGNAME", "postgres", 1);
    }
}

/* Run argv to completion (as postgres when asked and root), output appended
 * to out_path. Returns the exit status, 128+signal, or -1 when fork fails. */
static int s_run(const up_t *st, char *const argv[], bool as_postgres, const char *out_path)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == -1) {
        log_error("fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        s_child_setup(st, as_postgres, out_path);
        /* A cwd the postgres user cannot read makes initdb/pg_ctl complain. */
        if (chdir(st->data_dir) == -1 && chdir("/") == -1)
            _exit(126);
        execve(argv[0], argv, environ);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) == -1)
        if (errno != EINTR)
            return -1;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

/* The last lines of a log, to show next to an error. */
static void s_show_tail(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    sbuf_t *all = sbuf_new(4096);
    char chunk[4096];
    size_t n;
    while (all && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (sbuf_append(all, chunk, n) == -1)
            break;
    fclose(f);
    if (all && sbuf_len(all) > 0) {
        const char *d = sbuf_data(all);
        size_t len = sbuf_len(all), start = len, lines = 0;
        while (start > 0 && lines < 12)
            if (d[--start] == '\n' && start + 1 < len)
                lines++;
        fprintf(stderr, "--- last lines of %s ---\n%s%s", path, d + start + (d[start] == '\n'),
                d[len - 1] == '\n' ? "" : "\n");
    }
    sbuf_destroy(&all);
}

/* ------------------------------------------------------------- processes */

/* Pid stored in a pid file, 0 when missing or unreadable. */
static pid_t s_pidfile_read(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1 || pid <= 0 || pid > INT_MAX)
        pid = 0;
    fclose(f);
    return (pid_t)pid;
}

static int s_pidfile_write(const char *path, pid_t pid)
{
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f, "%ld\n", (long)pid) < 0 || fclose(f) != 0) {
        log_error("cannot write pid file %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* True when pid runs (not a zombie) and its argv[0] basename is program and,
 * when subcommand is set, argv[1] equals it. Redis rewrites its title to
 * "/usr/bin/redis-server 127.0.0.1:6379", so argv[0] is cut at a space. */
static bool s_proc_is(pid_t pid, const char *program, const char *subcommand)
{
    if (pid <= 0 || kill(pid, 0) == -1)
        return false;
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "r");
    if (f) {
        char state = '?';
        /* The name field may hold spaces and ')': the state follows the last ')'. */
        char line[512];
        if (fgets(line, sizeof line, f)) {
            char *rp = strrchr(line, ')');
            if (rp && rp[1] == ' ')
                state = rp[2];
        }
        fclose(f);
        if (state == 'Z' || state == 'X')
            return false;
    }
    snprintf(path, sizeof path, "/proc/%ld/cmdline", (long)pid);
    f = fopen(path, "r");
    if (!f)
        return false;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    if (n == 0)
        return false;
    buf[n] = '\0';
    char *arg0 = buf;
    char *arg1 = strlen(arg0) + 1 < n ? arg0 + strlen(arg0) + 1 : NULL;
    char *space = strchr(arg0, ' ');
    if (space)
        *space = '\0';
    const char *base = strrchr(arg0, '/') ? strrchr(arg0, '/') + 1 : arg0;
    if (strcmp(base, program) != 0)
        return false;
    return !subcommand || (arg1 && strcmp(arg1, subcommand) == 0);
}

static const char *s_self_name(const up_t *st)
{
    const char *slash = strrchr(st->self_exe, '/');
    return slash ? slash + 1 : st->self_exe;
}

/* A TCP connect to 127.0.0.1:port succeeds. */
static bool s_tcp_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

static bool s_tcp_wait(int port, int timeout_ms)
{
    int64_t deadline = s_now_ms() + timeout_ms;
    while (!s_tcp_open(port)) {
        if (s_now_ms() > deadline)
            return false;
        s_sleep_ms(100);
    }
    return true;
}

/* Start argv as a daemon: own session, output to log_path, pid to pid_path,
 * env (NULL-terminated "K=V") added. It must still run after
 * CHILD_SETTLE_MS, else its log is shown and -1 returned. */
static pid_t s_spawn_daemon(const up_t *st, char *const argv[], char *const env[],
                            const char *log_path, const char *pid_path)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == -1) {
        log_error("fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setsid();
        s_child_setup(st, false, log_path);
        for (char *const *e = env; e && *e; e++)
            putenv(*e);
        /* The cwd stays the caller's: a relative POSTCHI_CONFIG must still
         * name the same file for the child. */
        execve(argv[0], argv, environ);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    if (s_pidfile_write(pid_path, pid) == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    s_sleep_ms(CHILD_SETTLE_MS);
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
        unlink(pid_path);
        if (WIFEXITED(status))
            log_error("%s exited at once with status %d; see %s", argv[0], WEXITSTATUS(status),
                      log_path);
        else
            log_error("%s died at once of signal %d; see %s", argv[0], WTERMSIG(status), log_path);
        s_show_tail(log_path);
        return -1;
    }
    return pid;
}

/* Send SIGTERM, wait up to STOP_GRACE_MS for the process to go, then
 * SIGKILL. 0 when it is gone, -1 when even SIGKILL did not end it. */
static int s_stop_pid(pid_t pid, const char *program, const char *subcommand)
{
    kill(pid, SIGTERM);
    int64_t deadline = s_now_ms() + STOP_GRACE_MS;
    while (s_proc_is(pid, program, subcommand) && s_now_ms() < deadline)
        s_sleep_ms(50);
    if (!s_proc_is(pid, program, subcommand))
        return 0;
    log_warn("pid %ld did not stop within %d s: SIGKILL", (long)pid, STOP_GRACE_MS / 1000);
    kill(pid, SIGKILL);
    deadline = s_now_ms() + 2000;
    while (s_proc_is(pid, program, subcommand) && s_now_ms() < deadline)
        s_sleep_ms(50);
    return s_proc_is(pid, program, subcommand) ? -1 : 0;
}

/* ------------------------------------------------------------ arguments */

static void s_stack_free(up_t *st)
{
    free(st->data_dir);
    free(st->self_exe);
    free(st->pg_bin);
}

/* Parse flags and settle the data dir. Returns 0, or the exit status for a
 * usage error (2) / a broken environment (1). */
static int s_stack_init(up_t *st, const config_t *cfg, int argc, char **argv, bool is_up)
{
    memset(st, 0, sizeof *st);
    st->cfg = cfg;
    const char *dir = config_str(cfg, "data_dir");
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--data-dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
            st->data_dir_flag = true;
        } else if (strncmp(argv[i], "--data-dir=", 11) == 0) {
            dir = argv[i] + 11;
            st->data_dir_flag = true;
        } else if (is_up && strcmp(argv[i], "--services-only") == 0) {
            st->services_only = true;
        } else if (is_up && strcmp(argv[i], "--no-sync") == 0) {
            st->no_sync = true;
        } else {
            fprintf(stderr,
                    "usage: postchi %s [--data-dir DIR]%s\n", is_up ? "up" : "down",
                    is_up ? " [--services-only] [--no-sync]" : "");
            return 2;
        }
    }
    if (!dir || !*dir) {
        fprintf(stderr, "postchi: setting 'data_dir' is empty\n");
        return 2;
    }
    if (dir[0] == '/') {
        st->data_dir = strdup(dir);
    } else {
        char *cwd = getcwd(NULL, 0);
        if (!cwd) {
            log_error("getcwd: %s", strerror(errno));
            return 1;
        }
        st->data_dir = s_strf("%s/%s", cwd, dir);
        free(cwd);
    }
    /* Trailing slashes would only make the printed paths ugly. */
    size_t len = st->data_dir ? strlen(st->data_dir) : 0;
    while (len > 1 && st->data_dir[len - 1] == '/')
        st->data_dir[--len] = '\0';
    st->self_exe = realpath("/proc/self/exe", NULL);
    st->pg_bin = s_find_pg_bin();
    if (!st->data_dir || !st->self_exe) {
        log_error("cannot resolve the data dir or /proc/self/exe");
        return 1;
    }
    st->root = geteuid() == 0;
    if (st->root) {
        struct passwd *pw = getpwnam("postgres");
        if (!pw) {
            log_error("running as root but there is no 'postgres' user: install the Debian "
                      "package postgresql (it creates the user)");
            return 1;
        }
        st->pg_uid = pw->pw_uid;
        st->pg_gid = pw->pw_gid;
        pw = getpwnam("nobody");
        st->nobody_uid = pw ? pw->pw_uid : 65534;
        st->nobody_gid = pw ? pw->pw_gid : 65534;
    }
    return 0;
}

static char *s_dir(const up_t *st, const char *sub)
{
    return s_strf("%s/%s", st->data_dir, sub);
}

/* ------------------------------------------------------------ PostgreSQL */

/* Conninfo value quoted for libpq: '...' with \ and ' escaped. */
static int s_conninfo_add(sbuf_t *b, const char *key, const char *value)
{
    if (sbuf_appendf(b, "%s%s='", sbuf_len(b) ? " " : "", key) == -1)
        return -1;
    for (const char *p = value; *p; p++)
        if ((*p == '\\' || *p == '\'') && sbuf_append(b, "\\", 1) == -1)
            return -1;
        else if (sbuf_append(b, p, 1) == -1)
            return -1;
    return sbuf_append(b, "'", 1);
}

/* Conninfo for the cluster up manages; dbname NULL = pg_database. */
static char *s_conninfo(const up_t *st, const char *dbname)
{
    sbuf_t *b = sbuf_new(128);
    char port[16];
    snprintf(port, sizeof port, "%lld", (long long)config_int(st->cfg, "pg_port"));
    char *out = NULL;
    if (b && s_conninfo_add(b, "host", "127.0.0.1") == 0 && s_conninfo_add(b, "port", port) == 0 &&
        s_conninfo_add(b, "user", config_str(st->cfg, "pg_user")) == 0 &&
        s_conninfo_add(b, "dbname", dbname ? dbname : config_str(st->cfg, "pg_database")) == 0)
        out = sbuf_detach(b, NULL);
    sbuf_destroy(&b);
    return out;
}

/* `pg_ctl status`: true when the cluster's postmaster runs. */
static bool s_pg_running(const up_t *st, const char *pgdir, const char *log_path)
{
    char *pg_ctl = s_strf("%s/pg_ctl", st->pg_bin);
    char *argv[] = {pg_ctl, "status", "-D", (char *)pgdir, NULL};
    int rc = pg_ctl ? s_run(st, argv, true, log_path) : -1;
    free(pg_ctl);
    return rc == 0;
}

/* The pg_ctl -o string: a shell command fragment, so the socket dir is put
 * in single quotes. */
static char *s_pg_options(const up_t *st, const char *rundir)
{
    sbuf_t *b = sbuf_new(256);
    if (!b)
        return NULL;
    sbuf_appendf(b, "-p %lld -c listen_addresses=127.0.0.1 -k '",
                 (long long)config_int(st->cfg, "pg_port"));
    for (const char *p = rundir; *p; p++)
        if (*p == '\'')
            sbuf_append_str(b, "'\\''");
        else
            sbuf_append(b, p, 1);
    sbuf_appendf(b, "' -c fsync=%s%s", st->no_sync ? "off" : "on",
                 st->no_sync ? " -c synchronous_commit=off -c full_page_writes=off" : "");
    char *out = sbuf_detach(b, NULL);
    sbuf_destroy(&b);
    return out;
}

/* A connection to the up-managed cluster; NULL with the reason logged. */
static db_t *s_pg_connect(const up_t *st, const char *dbname, int64_t wait_ms)
{
    char *ci = s_conninfo(st, dbname);
    sbuf_t *err = sbuf_new(128);
    db_t *db = ci && err ? db_connect(ci, wait_ms, err) : NULL;
    if (!db)
        log_error("%s", err ? sbuf_data(err) : "out of memory");
    sbuf_destroy(&err);
    free(ci);
    return db;
}

/* CREATE DATABASE pg_database unless it exists. Names are identifiers, not
 * values, so it is quoted as one ("" doubles a quote) rather than passed as
 * a parameter. */
static int s_pg_create_database(const up_t *st)
{
    const char *name = config_str(st->cfg, "pg_database");
    db_t *db = s_pg_connect(st, "postgres", SERVER_WAIT_MS);
    if (!db)
        return -1;
    sbuf_t *err = sbuf_new(128);
    sbuf_t *sql = sbuf_new(64);
    int rc = -1;
    const char *params[] = {name};
    db_result_t *res =
        err && sql ? db_query(db, "SELECT 1 FROM pg_database WHERE datname = $1", 1, params, err)
                   : NULL;
    if (res && db_result_rows(res) > 0) {
        rc = 0;
    } else if (res) {
        int bad = sbuf_append_str(sql, "CREATE DATABASE \"");
        for (const char *p = name; *p && bad == 0; p++)
            bad = sbuf_append_str(sql, *p == '"' ? "\"\"" : (char[]){*p, '\0'});
        if (bad == 0)
            bad = sbuf_append_str(sql, "\"");
        rc = bad == 0 ? db_exec(db, sbuf_data(sql), 0, NULL, err) : -1;
        if (rc == 0)
            log_info("created database %s", name);
    }
    if (rc == -1)
        log_error("cannot create database %s: %s", name, err ? sbuf_data(err) : "out of memory");
    db_result_free(&res);
    sbuf_destroy(&sql);
    sbuf_destroy(&err);
    db_destroy(&db);
    return rc;
}

/* Apply the embedded migrations on db: 0 with *applied / *version set, or
 * -1 with the failing migration logged. */
static int s_migrate(db_t *db, int *applied, int *version)
{
    sbuf_t *err = sbuf_new(128);
    *applied = 0;
    *version = 0;
    int rc = err ? migrate_run(db, migrations_embedded, applied, err) : -1;
    if (rc == 0 && (*version = migrate_current(db, err)) < 0)
        rc = -1;
    if (rc == -1)
        log_error("migration failed: %s", err ? sbuf_data(err) : "out of memory");
    sbuf_destroy(&err);
    return rc;
}

/* The postgres user must reach data_dir/pg through every parent directory;
 * test that as postgres rather than guess from mode bits. */
static int s_pg_check_reachable(const up_t *st, const char *pgdir)
{
    if (!st->root)
        return 0;
    char *argv[] = {"/usr/bin/test", "-w", (char *)pgdir, "-a", "-x", (char *)pgdir, NULL};
    if (s_run(st, argv, true, NULL) == 0)
        return 0;
    log_error("PostgreSQL must run as user postgres, which cannot reach %s: make its parent "
              "directories traversable (chmod o+x) or choose another --data-dir (e.g. under /tmp)",
              pgdir);
    return -1;
}

static int s_up_postgres(const up_t *st)
{
    char *pgdir = s_dir(st, "pg");
    char *rundir = s_dir(st, "run");
    char *version = s_strf("%s/PG_VERSION", pgdir ? pgdir : "");
    char *initdb_log = s_strf("%s/log/initdb.log", st->data_dir);
    char *ctl_log = s_strf("%s/log/pg_ctl.log", st->data_dir);
    char *server_log = s_strf("%s/log/postgresql.log", st->data_dir);
    char *initdb = s_strf("%s/initdb", st->pg_bin);
    char *pg_ctl = s_strf("%s/pg_ctl", st->pg_bin);
    char *options = rundir ? s_pg_options(st, rundir) : NULL;
    int rc = -1;
    if (!pgdir || !rundir || !version || !initdb_log || !ctl_log || !server_log || !initdb ||
        !pg_ctl || !options)
        goto done;
    if (s_mkdir(pgdir, 0700) == -1 || s_chown(st, pgdir, st->pg_uid, st->pg_gid) == -1 ||
        s_pg_check_reachable(st, pgdir) == -1)
        goto done;
    /* The server writes its log itself, as postgres. */
    int fd = open(server_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd >= 0)
        close(fd);
    if (s_chown(st, server_log, st->pg_uid, st->pg_gid) == -1)
        goto done;
    if (!s_exists(version)) {
        log_info("initdb %s", pgdir);
        char *argv[] = {initdb, "-D", pgdir, "-A", "trust", "-U",
                        (char *)config_str(st->cfg, "pg_user"), "-E", "UTF8", "--locale=C.UTF-8",
                        st->no_sync ? "--no-sync" : NULL, NULL};
        if (s_run(st, argv, true, initdb_log) != 0) {
            log_error("initdb failed; see %s", initdb_log);
            s_show_tail(initdb_log);
            goto done;
        }
    }
    if (s_pg_running(st, pgdir, ctl_log)) {
        log_info("PostgreSQL already runs in %s", pgdir);
    } else {
        log_info("starting PostgreSQL port=%lld", (long long)config_int(st->cfg, "pg_port"));
        char *argv[] = {pg_ctl, "start", "-w", "-t", "60", "-D", pgdir,
                        "-l", server_log, "-o", options, NULL};
        if (s_run(st, argv, true, ctl_log) != 0) {
            log_error("PostgreSQL did not start; see %s", server_log);
            s_show_tail(server_log);
            goto done;
        }
    }
    if (s_pg_create_database(st) == -1)
        goto done;
    db_t *db = s_pg_connect(st, NULL, SERVER_WAIT_MS);
    int applied, schema;
    rc = db ? s_migrate(db, &applied, &schema) : -1;
    if (rc == 0)
        log_info("migrations applied=%d schema_version=%d", applied, schema);
    db_destroy(&db);
done:
    free(pgdir);
    free(rundir);
    free(version);
    free(initdb_log);
    free(ctl_log);
    free(server_log);
    free(initdb);
    free(pg_ctl);
    free(options);
    return rc;
}

/* ----------------------------------------------------- Redis, smtp-sink */

/* 1 when the pid file names a live program (reused), 0 when it must be
 * started (a stale pid file is removed). */
static int s_reuse(const char *pid_path, const char *program, const char *subcommand)
{
    pid_t pid = s_pidfile_read(pid_path);
    if (pid > 0 && s_proc_is(pid, program, subcommand))
        return 1;
    unlink(pid_path);
    return 0;
}

static int s_up_redis(const up_t *st, const char *redis_server)
{
    int port = (int)config_int(st->cfg, "redis_port");
    char *pid_path = s_strf("%s/run/redis.pid", st->data_dir);
    char *dir = s_dir(st, "redis");
    char *log_path = s_strf("%s/log/redis.log", st->data_dir);
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int rc = -1;
    if (!pid_path || !dir || !log_path)
        goto done;
    if (s_reuse(pid_path, "redis-server", NULL)) {
        log_info("Redis already runs (pid %ld)", (long)s_pidfile_read(pid_path));
    } else {
        log_info("starting Redis port=%d", port);
        char *argv[] = {(char *)redis_server, "--port", portstr, "--bind", "127.0.0.1", "--dir",
                        dir, "--daemonize", "yes", "--pidfile", pid_path, "--logfile", log_path,
                        "--save", "", "--appendonly", "no", NULL};
        if (s_run(st, argv, false, log_path) != 0) {
            log_error("redis-server failed; see %s", log_path);
            s_show_tail(log_path);
            goto done;
        }
    }
    if (!s_tcp_wait(port, SERVER_WAIT_MS)) {
        log_error("Redis does not accept connections on 127.0.0.1:%d; see %s", port, log_path);
        s_show_tail(log_path);
        goto done;
    }
    /* --daemonize writes the pid file from the forked server a moment later. */
    for (int i = 0; i < 50 && s_pidfile_read(pid_path) == 0; i++)
        s_sleep_ms(100);
    rc = 0;
done:
    free(pid_path);
    free(dir);
    free(log_path);
    return rc;
}

static int s_up_smtp_sink(const up_t *st, const char *smtp_sink)
{
    int port = (int)config_int(st->cfg, "smtp_sink_port");
    char *pid_path = s_strf("%s/run/smtp-sink.pid", st->data_dir);
    char *log_path = s_strf("%s/log/smtp-sink.log", st->data_dir);
    char *maildir = s_dir(st, "mail");
    char *tmpl = s_strf("%s/mail/%%Y%%m%%d/%%H%%M%%S.", st->data_dir);
    char *listen = s_strf("127.0.0.1:%d", port);
    int rc = -1;
    if (!pid_path || !log_path || !maildir || !tmpl || !listen)
        goto done;
    if (s_chown(st, maildir, st->nobody_uid, st->nobody_gid) == -1)
        goto done;
    if (s_reuse(pid_path, "smtp-sink", NULL)) {
        log_info("smtp-sink already runs (pid %ld)", (long)s_pidfile_read(pid_path));
    } else {
        log_info("starting smtp-sink port=%d", port);
        /* As root smtp-sink insists on -u to drop privileges after binding. */
        char *argv[10];
        int i = 0;
        argv[i++] = (char *)smtp_sink;
        if (st->root) {
            argv[i++] = "-u";
            argv[i++] = "nobody";
        }
        argv[i++] = "-d";
        argv[i++] = tmpl;
        argv[i++] = "-c";
        argv[i++] = listen;
        argv[i++] = "1000";
        argv[i] = NULL;
        if (s_spawn_daemon(st, argv, NULL, log_path, pid_path) == -1)
            goto done;
    }
    if (!s_tcp_wait(port, SERVER_WAIT_MS)) {
        log_error("smtp-sink does not accept connections on %s; see %s", listen, log_path);
        goto done;
    }
    rc = 0;
done:
    free(pid_path);
    free(log_path);
    free(maildir);
    free(tmpl);
    free(listen);
    return rc;
}

/* ------------------------------------------------------------------ mesh */

/* The dev stack's own secrets (login-token key, at-rest key), made once
 * and kept in data_dir/secrets (mode 0600) so tokens and encrypted DKIM keys
 * survive a restart. Settings given by the user win. 0 or -1. */
static int s_dev_secrets(const up_t *st, char *jwt_env, char *key_env, size_t size)
{
    char jwt[65] = "", key[65] = "";
    char *path = s_strf("%s/secrets", st->data_dir);
    if (!path)
        return -1;
    FILE *f = fopen(path, "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\r\n")] = 0;
            if (strncmp(line, "jwt_secret=", 11) == 0 && strlen(line + 11) == 64)
                memcpy(jwt, line + 11, 65);
            if (strncmp(line, "secret_key=", 11) == 0 && strlen(line + 11) == 64)
                memcpy(key, line + 11, 65);
        }
        fclose(f);
    }
    if (!jwt[0] || !key[0]) {
        unsigned char raw[64];
        if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
            free(path);
            return -1;
        }
        for (int i = 0; i < 32; i++) {
            sprintf(jwt + 2 * i, "%02x", raw[i]);
            sprintf(key + 2 * i, "%02x", raw[32 + i]);
        }
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        f = fd >= 0 ? fdopen(fd, "w") : NULL;
        if (!f) {
            if (fd >= 0)
                close(fd);
            log_error("cannot write %s: %s", path, strerror(errno));
            free(path);
            return -1;
        }
        fprintf(f, "jwt_secret=%s\nsecret_key=%s\n", jwt, key);
        fclose(f);
        log_info("made the dev stack's secrets in %s", path);
    }
    free(path);
    const char *cj = config_str(st->cfg, "jwt_secret"), *ck = config_str(st->cfg, "secret_key");
    snprintf(jwt_env, size, "POSTCHI_JWT_SECRET=%s", cj[0] ? cj : jwt);
    snprintf(key_env, size, "POSTCHI_SECRET_KEY=%s", ck[0] ? ck : key);
    return 0;
}

/* Start `postchi <subcommand>` as node name unless it already runs. extra
 * (NULL or NULL-terminated) adds environment entries. */
static int s_up_node(const up_t *st, const char *name, const char *subcommand, int metrics_port,
                     char *const *extra)
{
    char *pid_path = s_strf("%s/run/%s.pid", st->data_dir, name);
    char *log_path = s_strf("%s/log/%s.log", st->data_dir, name);
    char *env_node = s_strf("POSTCHI_NODE_ID=%s", name);
    char *env_metrics = s_strf("POSTCHI_METRICS_PORT=%d", metrics_port);
    char *env_dir = s_strf("POSTCHI_DATA_DIR=%s", st->data_dir);
    int rc = -1;
    if (!pid_path || !log_path || !env_node || !env_metrics || !env_dir)
        goto done;
    if (s_reuse(pid_path, s_self_name(st), subcommand)) {
        log_info("%s already runs (pid %ld)", name, (long)s_pidfile_read(pid_path));
        rc = 0;
        goto done;
    }
    log_info("starting %s", name);
    char *argv[] = {st->self_exe, (char *)subcommand, NULL};
    char *env[8] = {env_node, env_metrics, env_dir, NULL};
    for (int i = 0; extra && extra[i] && i < 4; i++)
        env[3 + i] = extra[i];
    rc = s_spawn_daemon(st, argv, env, log_path, pid_path) > 0 ? 0 : -1;
    if (rc == -1)
        log_error("cannot start '%s %s' (node %s): see %s", s_self_name(st), subcommand, name,
                  log_path);
done:
    free(pid_path);
    free(log_path);
    free(env_node);
    free(env_metrics);
    free(env_dir);
    return rc;
}

static int s_up_mesh(const up_t *st)
{
    int base = (int)config_int(st->cfg, "up_metrics_port");
    int workers = (int)config_int(st->cfg, "up_workers");
    char jwt_env[128], key_env[128];
    if (s_dev_secrets(st, jwt_env, key_env, sizeof jwt_env) != 0)
        return -1;
    if (s_up_node(st, "broker", "broker", base, NULL) == -1)
        return -1;
    /* Workers deliver through the capture sink unless a relay is set, and
     * open the domains' DKIM keys with the stack's at-rest key. */
    char relay_env[300];
    const char *relay = config_str(st->cfg, "smtp_relay");
    if (relay[0])
        snprintf(relay_env, sizeof relay_env, "POSTCHI_SMTP_RELAY=%s", relay);
    else
        snprintf(relay_env, sizeof relay_env, "POSTCHI_SMTP_RELAY=127.0.0.1:%lld",
                 (long long)config_int(st->cfg, "smtp_sink_port"));
    /* Each worker runs the return-path listener on its own port, so
     * bounces and complaints sent to the stack are handled as in
     * production (worker-N: up_inbound_port + N - 1). */
    int inbound = (int)config_int(st->cfg, "up_inbound_port");
    if (inbound + workers - 1 > 65535) {
        log_error("setting 'up_inbound_port': %d leaves no room for %d workers' ports", inbound,
                  workers);
        return -1;
    }
    char inbound_env[64];
    char *worker_env[] = {relay_env, key_env, inbound_env, NULL};
    for (int i = 1; i <= workers; i++) {
        char name[32];
        snprintf(name, sizeof name, "worker-%d", i);
        snprintf(inbound_env, sizeof inbound_env, "POSTCHI_INBOUND_PORT=%d", inbound + i - 1);
        if (s_up_node(st, name, "worker", base + i, worker_env) == -1)
            return -1;
    }
    /* The stack has no DNS for the user's domains: verifying one marks it
     * verified at once, so the first send can go to the capture sink. */
    char skip_env[] = "POSTCHI_DOMAINS_SKIP_DNS=true";
    char *api_env[] = {jwt_env, key_env, skip_env, NULL};
    return s_up_node(st, "api", "api", base + workers + 1, api_env);
}

/* --------------------------------------------------------------- summary */

static void s_summary(const up_t *st)
{
    const config_t *c = st->cfg;
    int base = (int)config_int(c, "up_metrics_port");
    int workers = (int)config_int(c, "up_workers");
    printf("\nPostchi dev stack is up (data dir %s)\n", st->data_dir);
    printf("  PostgreSQL  127.0.0.1:%lld  database %s, user %s (trust auth)\n",
           (long long)config_int(c, "pg_port"), config_str(c, "pg_database"),
           config_str(c, "pg_user"));
    printf("              psql -h 127.0.0.1 -p %lld -U %s %s\n",
           (long long)config_int(c, "pg_port"), config_str(c, "pg_user"),
           config_str(c, "pg_database"));
    printf("  Redis       127.0.0.1:%lld\n", (long long)config_int(c, "redis_port"));
    printf("  SMTP sink   127.0.0.1:%lld  every mail lands as a file under %s/mail/\n",
           (long long)config_int(c, "smtp_sink_port"), st->data_dir);
    if (!st->services_only) {
        printf("  broker      %s  metrics http://127.0.0.1:%d/metrics\n",
               config_str(c, "broker_endpoint"), base);
        int inbound = (int)config_int(c, "up_inbound_port");
        for (int i = 1; i <= workers; i++)
            printf("  worker-%-4d metrics http://127.0.0.1:%d/metrics  bounces smtp://%s:%d\n", i,
                   base + i, config_str(c, "inbound_bind"), inbound + i - 1);
        printf("  api         http://%s:%lld/  (metrics port %d)\n", config_str(c, "api_bind"),
               (long long)config_int(c, "api_port"), base + workers + 1);
    }
    printf("  logs        %s/log/   pid files %s/run/\n", st->data_dir, st->data_dir);

    /* Name the data dir in the stop hint whenever it is not the default one. */
    bool custom = st->data_dir_flag;
    config_t *defaults = config_new();
    if (defaults) {
        const char *d = config_str(defaults, "data_dir");
        char *cwd = getcwd(NULL, 0);
        char *abs = d[0] == '/' ? strdup(d) : s_strf("%s/%s", cwd ? cwd : "", d);
        custom = custom || !abs || strcmp(abs, st->data_dir) != 0;
        free(abs);
        free(cwd);
        config_destroy(&defaults);
    }
    if (custom)
        printf("stop with: postchi down --data-dir %s\n", st->data_dir);
    else
        printf("stop with: postchi down\n");
    fflush(stdout);
}

/* ------------------------------------------------------------------- up */

/* Each tool with the Debian package that ships it. */
static int s_find_tools(up_t *st, char **redis_server, char **smtp_sink)
{
    int rc = 0;
    if (!st->pg_bin) {
        log_error("initdb not found under /usr/lib/postgresql/*/bin: install the Debian package "
                  "postgresql (apt-get install postgresql)");
        rc = -1;
    }
    *redis_server = s_which("redis-server");
    if (!*redis_server) {
        log_error("redis-server not found: install the Debian package redis-server "
                  "(apt-get install redis-server)");
        rc = -1;
    }
    *smtp_sink = s_which("smtp-sink");
    if (!*smtp_sink) {
        log_error("smtp-sink not found: install the Debian package postfix "
                  "(apt-get install postfix; choose 'No configuration')");
        rc = -1;
    }
    return rc;
}

int devstack_up(const config_t *cfg, int argc, char **argv)
{
    up_t st;
    int rc = s_stack_init(&st, cfg, argc, argv, true);
    if (rc != 0) {
        s_stack_free(&st);
        return rc;
    }
    char *redis_server = NULL, *smtp_sink = NULL;
    rc = 1;
    if (s_find_tools(&st, &redis_server, &smtp_sink) == -1)
        goto done;
    if (strcmp(config_str(cfg, "pg_host"), "127.0.0.1") != 0 &&
        strcmp(config_str(cfg, "pg_host"), "localhost") != 0)
        log_warn("up starts PostgreSQL on 127.0.0.1 but pg_host=%s: Postchi processes will "
                 "not use it", config_str(cfg, "pg_host"));

    /* Directories first: PostgreSQL's socket goes in run/, which therefore
     * belongs to postgres when we are root (root writes there anyway). */
    static const char *const subdirs[] = {"pg", "redis", "mail", "run", "log"};
    if (s_mkdir_p(st.data_dir, 0755) == -1)
        goto done;
    for (size_t i = 0; i < sizeof subdirs / sizeof subdirs[0]; i++) {
        char *d = s_dir(&st, subdirs[i]);
        int bad = !d || s_mkdir(d, strcmp(subdirs[i], "pg") == 0 ? 0700 : 0755) == -1;
        if (!bad && strcmp(subdirs[i], "run") == 0)
            bad = s_chown(&st, d, st.pg_uid, st.pg_gid) == -1;
        free(d);
        if (bad)
            goto done;
    }
    if (s_up_postgres(&st) == -1 || s_up_redis(&st, redis_server) == -1 ||
        s_up_smtp_sink(&st, smtp_sink) == -1)
        goto done;
    if (!st.services_only && s_up_mesh(&st) == -1)
        goto done;
    s_summary(&st);
    rc = 0;
done:
    if (rc != 0)
        fprintf(stderr, "postchi up failed; what did start keeps running: stop it with "
                        "'postchi down --data-dir %s'\n",
                st.data_dir);
    free(redis_server);
    free(smtp_sink);
    s_stack_free(&st);
    return rc;
}

/* ----------------------------------------------------------------- down */

typedef struct {
    char *path;           /* the pid file */
    const owned_t *owner; /* which row of s_owned it matched */
} pidfile_t;

static int s_pidfile_cmp(const void *a, const void *b)
{
    const pidfile_t *x = a, *y = b;
    if (x->owner->stop_rank != y->owner->stop_rank)
        return x->owner->stop_rank - y->owner->stop_rank;
    return strcmp(y->path, x->path); /* worker-2 before worker-1 */
}

static const owned_t *s_owner_of(const char *name)
{
    size_t len = strlen(name);
    if (len < 5 || strcmp(name + len - 4, ".pid") != 0)
        return NULL;
    len -= 4;
    for (size_t i = 0; i < sizeof s_owned / sizeof s_owned[0]; i++) {
        size_t plen = strlen(s_owned[i].prefix);
        if (s_owned[i].exact ? (len == plen && strncmp(name, s_owned[i].prefix, plen) == 0)
                             : (len > plen && strncmp(name, s_owned[i].prefix, plen) == 0))
            return &s_owned[i];
    }
    return NULL;
}

/* Stop everything named by run/\*.pid; *stopped counts what ran. */
static int s_down_pidfiles(const up_t *st, int *stopped)
{
    char *rundir = s_dir(st, "run");
    DIR *d = rundir ? opendir(rundir) : NULL;
    if (!d) {
        free(rundir);
        return 0; /* never started here */
    }
    pidfile_t *files = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const owned_t *owner = s_owner_of(e->d_name);
        if (!owner)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            pidfile_t *grown = realloc(files, cap * sizeof *files);
            if (!grown) {
                rc = -1;
                break;
            }
            files = grown;
        }
        files[n].path = s_strf("%s/%s", rundir, e->d_name);
        files[n].owner = owner;
        if (files[n].path)
            n++;
    }
    closedir(d);
    if (n > 1)
        qsort(files, n, sizeof *files, s_pidfile_cmp);
    for (size_t i = 0; i < n; i++) {
        const owned_t *o = files[i].owner;
        const char *program = o->program ? o->program : s_self_name(st);
        pid_t pid = s_pidfile_read(files[i].path);
        if (pid > 0 && s_proc_is(pid, program, o->subcommand)) {
            log_info("stopping %s pid=%ld", files[i].path + strlen(rundir) + 1, (long)pid);
            if (s_stop_pid(pid, program, o->subcommand) == -1) {
                log_error("pid %ld (%s) would not stop", (long)pid, program);
                rc = -1;
                continue; /* keep its pid file: it still runs */
            }
            (*stopped)++;
        } else if (pid > 0) {
            log_info("%s: pid %ld is not '%s%s%s'; left alone, stale pid file removed",
                     files[i].path, (long)pid, program, o->subcommand ? " " : "",
                     o->subcommand ? o->subcommand : "");
        }
        unlink(files[i].path);
    }
    for (size_t i = 0; i < n; i++)
        free(files[i].path);
    free(files);
    free(rundir);
    return rc;
}

static int s_down_postgres(const up_t *st, int *stopped)
{
    char *pgdir = s_dir(st, "pg");
    char *version = s_strf("%s/pg/PG_VERSION", st->data_dir);
    char *ctl_log = s_strf("%s/log/pg_ctl.log", st->data_dir);
    char *pg_ctl = st->pg_bin ? s_strf("%s/pg_ctl", st->pg_bin) : NULL;
    int rc = 0;
    if (pgdir && version && ctl_log && s_exists(version)) {
        if (!pg_ctl) {
            log_error("%s holds a PostgreSQL cluster but pg_ctl is not installed", pgdir);
            rc = -1;
        } else if (s_pg_running(st, pgdir, ctl_log)) {
            log_info("stopping PostgreSQL in %s", pgdir);
            char *argv[] = {pg_ctl, "stop", "-m", "fast", "-w", "-t", "60", "-D", pgdir, NULL};
            if (s_run(st, argv, true, ctl_log) != 0) {
                log_error("pg_ctl stop failed; see %s", ctl_log);
                s_show_tail(ctl_log);
                rc = -1;
            } else {
                (*stopped)++;
            }
        }
    }
    free(pgdir);
    free(version);
    free(ctl_log);
    free(pg_ctl);
    return rc;
}

int devstack_down(const config_t *cfg, int argc, char **argv)
{
    up_t st;
    int rc = s_stack_init(&st, cfg, argc, argv, false);
    if (rc != 0) {
        s_stack_free(&st);
        return rc;
    }
    int stopped = 0;
    rc = s_down_pidfiles(&st, &stopped) == 0 ? 0 : 1;
    if (s_down_postgres(&st, &stopped) == -1)
        rc = 1;
    if (rc == 0)
        printf("%s: %d process%s stopped\n", st.data_dir, stopped, stopped == 1 ? "" : "es");
    s_stack_free(&st);
    return rc;
}

/* --------------------------------------------------------------- migrate */

int devstack_migrate(const config_t *cfg, int argc, char **argv)
{
    (void)argv;
    if (argc > 0) {
        fprintf(stderr, "usage: postchi migrate\n");
        return 2;
    }
    char *ci = db_conninfo_from_config(cfg);
    sbuf_t *err = sbuf_new(128);
    db_t *db = ci && err ? db_connect(ci, config_int(cfg, "startup_wait_ms"), err) : NULL;
    int rc = 1;
    if (!db) {
        log_error("%s", err ? sbuf_data(err) : "out of memory");
    } else {
        int applied, version;
        if (s_migrate(db, &applied, &version) == 0) {
            printf("migrations: %d applied now, schema version %d\n", applied, version);
            rc = 0;
        }
    }
    db_destroy(&db);
    sbuf_destroy(&err);
    free(ci);
    return rc;
}
