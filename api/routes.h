/*
 * routes - the list of route tables (NULL-terminated; each table ends with
 * a row whose method is NULL). Called once at start-up, before threads.
 */
#ifndef POSTCHI_ROUTES_H
#define POSTCHI_ROUTES_H

#include "rest.h"

const api_route_t *const *api_route_tables(void);

#endif
