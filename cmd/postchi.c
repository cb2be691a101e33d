/*
 * postchi - the one front door: `postchi <subcommand>`.
 *
 * Subcommands are rows in s_commands; each gets the loaded configuration
 * and the arguments after its name. A bad setting stops every subcommand
 * before it starts, with the setting's name and what was wrong.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name; /* what the user types */
    int (*run)(int argc, char **argv);
    const char *help; /* one line for `postchi help` */
} command_t;

static int s_version(int argc, char **argv);
static int s_help(int argc, char **argv);

static const command_t s_commands[] = {
    {"version", s_version, "print the version"},
    {"help", s_help, "list subcommands"},
};

static int s_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("postchi %s\n", POSTCHI_VERSION);
    return 0;
}

static int s_help(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("usage: postchi <subcommand> [args]\n\n");
    for (size_t i = 0; i < sizeof s_commands / sizeof s_commands[0]; i++)
        printf("  %-10s %s\n", s_commands[i].name, s_commands[i].help);
    return 0;
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : "help";
    for (size_t i = 0; i < sizeof s_commands / sizeof s_commands[0]; i++)
        if (strcmp(s_commands[i].name, name) == 0)
            return s_commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "postchi: unknown subcommand '%s' (try 'postchi help')\n", name);
    return 2;
}
