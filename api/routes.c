/*
 * routes - every REST route the API node serves: one line per resource
 * module. A module's table is weak here so the node links while a module
 * is not built in (it then simply has no routes).
 */
#include <stddef.h>

#include "rest.h"
#include "routes.h"

#define TABLE(name) extern const api_route_t name[] __attribute__((weak))
TABLE(api_routes_auth);
TABLE(api_routes_api_keys);
TABLE(api_routes_domains);
TABLE(api_routes_contacts);
TABLE(api_routes_lists);
TABLE(api_routes_tags);
TABLE(api_routes_segments);
TABLE(api_routes_suppressions);
TABLE(api_routes_templates);
TABLE(api_routes_webhooks);
TABLE(api_routes_events);
TABLE(api_routes_ops);
TABLE(api_routes_messages);
TABLE(api_routes_unsubscribe);

const api_route_t *const *api_route_tables(void)
{
    static const api_route_t *tables[16];
    static int filled;
    if (!filled) {
        const api_route_t *all[] = {api_routes_auth,      api_routes_api_keys,
                                    api_routes_domains,   api_routes_contacts,
                                    api_routes_lists,     api_routes_tags,
                                    api_routes_segments,  api_routes_suppressions,
                                    api_routes_templates, api_routes_webhooks,
                                    api_routes_events,    api_routes_ops,
                                    api_routes_messages,  api_routes_unsubscribe};
        int n = 0;
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            if (all[i])
                tables[n++] = all[i];
        tables[n] = NULL;
        filled = 1;
    }
    return tables;
}
