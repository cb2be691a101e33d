/*
 * postchi - the one front door: `postchi <subcommand>`.
 *
 * Subcommands are rows in s_commands; each gets the loaded configuration
 * and the arguments after its name. A bad setting stops every subcommand
 * before it starts, with the setting's name and what was wrong (exit 2).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "sbuf.h"

#include "api.h"
#include "broker.h"
#include "devstack.h"
#include "worker.h"

extern char **environ;

typedef struct {
    const char *name; /* what the user types */
    int (*run)(const config_t *cfg, int argc, char **argv);
    const char *help; /* one line for `postchi help` */
} command_t;

static int s_version(const config_t *cfg, int argc, char **argv);
static int s_help(const config_t *cfg, int argc, char **argv);
static int s_config(const config_t *cfg, int argc, char **argv);
static int s_broker(const config_t *cfg, int argc, char **argv);
static int s_worker(const config_t *cfg, int argc, char **argv);
static int s_api(const config_t *cfg, int argc, char **argv);

static const command_t s_commands[] = {
    {"broker", s_broker, "run the broker (routes messages to actors on workers)"},
    {"worker", s_worker, "run a worker (hosts actors)"},
    {"api", s_api, "run an API node (REST, /healthz, /readyz, /metrics)"},
    {"up", devstack_up, "start the dev stack (PostgreSQL, Redis, smtp-sink, mesh) under data_dir"},
    {"down", devstack_down, "stop everything `up` started"},
    {"migrate", devstack_migrate, "apply the database migrations"},
    {"config", s_config, "print the current settings"},
    {"version", s_version, "print the version"},
    {"help", s_help, "list subcommands; `help config` lists every setting"},
};

static int s_version(const config_t *cfg, int argc, char **argv)
{
    (void)cfg;
    (void)argc;
    (void)argv;
    printf("postchi %s\n", POSTCHI_VERSION);
    return 0;
}

/* The long-running processes name themselves in every log line and take
 * their level from log_level. */
static void s_process_log(const config_t *cfg, const char *process)
{
    log_level_t level = LOG_INFO;
    log_init(process);
    if (log_level_parse(config_str(cfg, "log_level"), &level) == 0)
        log_set_level(level);
}

static int s_broker(const config_t *cfg, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    s_process_log(cfg, "broker");
    return broker_main(cfg);
}

static int s_worker(const config_t *cfg, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    s_process_log(cfg, "worker");
    return worker_main(cfg);
}

static int s_api(const config_t *cfg, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    s_process_log(cfg, "api");
    return api_main(cfg);
}

static int s_config(const config_t *cfg, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    config_print(cfg, stdout);
    return 0;
}

static int s_help(const config_t *cfg, int argc, char **argv)
{
    (void)cfg;
    if (argc > 0 && strcmp(argv[0], "config") == 0) {
        config_print_help(stdout);
        return 0;
    }
    printf("usage: postchi <subcommand> [args]\n\n");
    for (size_t i = 0; i < sizeof s_commands / sizeof s_commands[0]; i++)
        printf("  %-10s %s\n", s_commands[i].name, s_commands[i].help);
    printf("\nSettings come from built-in defaults, the file named by POSTCHI_CONFIG,\n"
           "then POSTCHI_<NAME> environment variables: see `postchi help config`.\n");
    return 0;
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : "help";
    const command_t *cmd = NULL;
    for (size_t i = 0; i < sizeof s_commands / sizeof s_commands[0]; i++)
        if (strcmp(s_commands[i].name, name) == 0)
            cmd = &s_commands[i];
    if (!cmd) {
        fprintf(stderr, "postchi: unknown subcommand '%s' (try 'postchi help')\n", name);
        return 2;
    }
    log_init("postchi");
    sbuf_t *err = sbuf_new(128);
    config_t *cfg = err ? config_load(NULL, environ, err) : NULL;
    if (!cfg) {
        fprintf(stderr, "postchi: %s\n", err ? sbuf_data(err) : "out of memory");
        sbuf_destroy(&err);
        return 2;
    }
    sbuf_destroy(&err);
    int rc = cmd->run(cfg, argc > 1 ? argc - 2 : 0, argv + (argc > 1 ? 2 : 1));
    config_destroy(&cfg);
    return rc;
}
