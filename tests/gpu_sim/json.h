/* Tiny JSON tree: parse, look up, set, write. Enough for the simulator's state file. */
#ifndef GPU_SIM_JSON_H
#define GPU_SIM_JSON_H

enum json_type { JSON_NULL, JSON_BOOL, JSON_NUM, JSON_STR, JSON_ARR, JSON_OBJ };

struct json {
    enum json_type type;
    double num;          /* JSON_NUM, and JSON_BOOL as 0/1 */
    char *str;           /* JSON_STR */
    char *key;           /* set on members of an object */
    struct json *child;  /* first element or member */
    struct json *next;   /* next sibling */
};

struct json *json_parse(const char *text); /* NULL on malformed text */
char *json_write(const struct json *node); /* malloc'd, indented, ends in a newline */
void json_free(struct json *node);

struct json *json_get(const struct json *obj, const char *key);
struct json *json_at(const struct json *arr, int index);
int json_len(const struct json *arr);
/* The member's number, or fallback when it is missing, null or not a number. */
double json_num(const struct json *obj, const char *key, double fallback);
const char *json_str(const struct json *obj, const char *key, const char *fallback);
/* Set a member, adding it when missing; return 0, or -1 when out of memory. */
int json_set_num(struct json *obj, const char *key, double value);
int json_set_str(struct json *obj, const char *key, const char *value);

#endif
