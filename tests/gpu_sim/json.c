/* Tiny JSON tree: a recursive-descent parser and an indenting writer (RFC 8259, UTF-8). */
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64 /* state files are shallow; this stops runaway recursion */

struct parser {
    const char *p;
    int depth;
};

static struct json *parse_value(struct parser *ps);

static struct json *new_node(enum json_type type)
{
    struct json *node = calloc(1, sizeof *node);
    if (node)
        node->type = type;
    return node;
}

void json_free(struct json *node)
{
    while (node) {
        struct json *next = node->next;
        json_free(node->child);
        free(node->str);
        free(node->key);
        free(node);
        node = next;
    }
}

static void skip_space(struct parser *ps)
{
    while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')
        ps->p++;
}

static int hex4(const char *s, unsigned *out)
{
    *out = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int digit = c >= '0' && c <= '9' ? c - '0'
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (digit < 0)
            return -1;
        *out = *out * 16 + (unsigned)digit;
    }
    return 0;
}

static char *put_utf8(char *out, unsigned cp)
{
    if (cp < 0x80) {
        *out++ = (char)cp;
    } else if (cp < 0x800) {
        *out++ = (char)(0xC0 | cp >> 6);
        *out++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *out++ = (char)(0xE0 | cp >> 12);
        *out++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *out++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *out++ = (char)(0xF0 | cp >> 18);
        *out++ = (char)(0x80 | (cp >> 12 & 0x3F));
        *out++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *out++ = (char)(0x80 | (cp & 0x3F));
    }
    return out;
}

/* Reads a \uXXXX escape (a surrogate pair when present) after the backslash-u. */
static const char *parse_unicode(const char *p, unsigned *cp)
{
    if (hex4(p, cp))
        return NULL;
    p += 4;
    if (*cp >= 0xD800 && *cp < 0xDC00) {
        unsigned low;
        if (p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &low) || low < 0xDC00 || low > 0xDFFF)
            return NULL;
        *cp = 0x10000 + ((*cp - 0xD800) << 10) + (low - 0xDC00);
        p += 6;
    } else if (*cp >= 0xDC00 && *cp <= 0xDFFF) {
        return NULL;
    }
    return p;
}

/* Decoding never grows a string, so the raw length bounds the buffer. */
static char *parse_string(struct parser *ps)
{
    const char *p = ++ps->p;
    size_t raw = 0;
    while (p[raw] && p[raw] != '"')
        raw += p[raw] == '\\' && p[raw + 1] ? 2 : 1;
    if (!p[raw])
        return NULL;
    char *out = malloc(raw + 1), *o = out;
    if (!out)
        return NULL;
    while (*p != '"') {
        unsigned char c = (unsigned char)*p++;
        if (c < 0x20)
            goto fail;
        if (c != '\\') {
            *o++ = (char)c;
            continue;
        }
        unsigned cp;
        switch (*p++) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (!(p = parse_unicode(p, &cp)))
                goto fail;
            break;
        default: goto fail;
        }
        o = put_utf8(o, cp);
    }
    *o = '\0';
    ps->p = p + 1;
    return out;
fail:
    free(out);
    return NULL;
}

static const char *skip_digits(const char *p)
{
    while (*p >= '0' && *p <= '9')
        p++;
    return p;
}

/* Checks the JSON grammar first: strtod alone would also take hex, "inf" and "nan". */
static struct json *parse_number(struct parser *ps)
{
    const char *p = ps->p + (*ps->p == '-'), *digits = p;
    if ((p = skip_digits(digits)) == digits)
        return NULL;
    if (*p == '.') {
        digits = p + 1;
        if ((p = skip_digits(digits)) == digits)
            return NULL;
    }
    if (*p == 'e' || *p == 'E') {
        digits = p + 1 + (p[1] == '+' || p[1] == '-');
        if ((p = skip_digits(digits)) == digits)
            return NULL;
    }
    struct json *node = new_node(JSON_NUM);
    if (node)
        node->num = strtod(ps->p, NULL);
    ps->p = p;
    return node;
}

static struct json *parse_word(struct parser *ps, const char *word, enum json_type type, double num)
{
    size_t len = strlen(word);
    if (strncmp(ps->p, word, len))
        return NULL;
    ps->p += len;
    struct json *node = new_node(type);
    if (node)
        node->num = num;
    return node;
}

/* Parses elements (or "key": value members) up to the closing bracket. */
static struct json *parse_container(struct parser *ps, enum json_type type, char close)
{
    struct json *node = new_node(type), **tail = node ? &node->child : NULL;
    if (!node || ++ps->depth > MAX_DEPTH)
        goto fail;
    ps->p++;
    skip_space(ps);
    if (*ps->p == close) {
        ps->p++;
        ps->depth--;
        return node;
    }
    for (;;) {
        char *key = NULL;
        skip_space(ps);
        if (type == JSON_OBJ) {
            if (*ps->p != '"' || !(key = parse_string(ps)))
                goto fail;
            skip_space(ps);
            if (*ps->p++ != ':') {
                free(key);
                goto fail;
            }
        }
        struct json *item = parse_value(ps);
        if (!item) {
            free(key);
            goto fail;
        }
        item->key = key;
        *tail = item;
        tail = &item->next;
        skip_space(ps);
        if (*ps->p == ',') {
            ps->p++;
        } else if (*ps->p == close) {
            ps->p++;
            ps->depth--;
            return node;
        } else {
            goto fail;
        }
    }
fail:
    json_free(node);
    return NULL;
}

static struct json *parse_value(struct parser *ps)
{
    skip_space(ps);
    switch (*ps->p) {
    case '{': return parse_container(ps, JSON_OBJ, '}');
    case '[': return parse_container(ps, JSON_ARR, ']');
    case 't': return parse_word(ps, "true", JSON_BOOL, 1);
    case 'f': return parse_word(ps, "false", JSON_BOOL, 0);
    case 'n': return parse_word(ps, "null", JSON_NULL, 0);
    case '"': {
        char *str = parse_string(ps);
        struct json *node = str ? new_node(JSON_STR) : NULL;
        if (node)
            node->str = str;
        else
            free(str);
        return node;
    }
    default: return parse_number(ps);
    }
}

struct json *json_parse(const char *text)
{
    struct parser ps = {text, 0};
    struct json *root = parse_value(&ps);
    skip_space(&ps);
    if (root && *ps.p) {
        json_free(root);
        return NULL;
    }
    return root;
}

struct buf {
    char *s;
    size_t len, cap;
    int failed;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *s2 = realloc(b->s, cap);
        if (!s2) {
            b->failed = 1;
            return;
        }
        b->s = s2;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_string(struct buf *b, const char *s)
{
    puts_(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            snprintf(esc, sizeof esc, "\\%c", c);
            puts_(b, esc);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            puts_(b, esc);
        } else {
            put(b, s, 1);
        }
    }
    puts_(b, "\"");
}

static void put_indent(struct buf *b, int depth)
{
    puts_(b, "\n");
    for (int i = 0; i < depth; i++)
        puts_(b, "  ");
}

static int is_flat(const struct json *node)
{
    for (const struct json *c = node->child; c; c = c->next)
        if (c->type == JSON_ARR || c->type == JSON_OBJ)
            return 0;
    return 1;
}

/* Arrays of scalars stay on one line ([8, 6]); everything else gets one member per line. */
static void put_value(struct buf *b, const struct json *node, int depth)
{
    char num[32];
    switch (node->type) {
    case JSON_NULL: puts_(b, "null"); break;
    case JSON_BOOL: puts_(b, node->num ? "true" : "false"); break;
    case JSON_STR: put_string(b, node->str); break;
    case JSON_NUM:
        if (!isfinite(node->num))
            snprintf(num, sizeof num, "null");
        else if (node->num == floor(node->num) && fabs(node->num) < 1e15)
            snprintf(num, sizeof num, "%.0f", node->num);
        else if (snprintf(num, sizeof num, "%.15g", node->num), strtod(num, NULL) != node->num)
            snprintf(num, sizeof num, "%.17g", node->num); /* the shortest of the two that reads back exactly */
        puts_(b, num);
        break;
    case JSON_ARR:
    case JSON_OBJ: {
        int inline_ = node->type == JSON_ARR && is_flat(node);
        puts_(b, node->type == JSON_ARR ? "[" : "{");
        for (const struct json *c = node->child; c; c = c->next) {
            if (inline_)
                puts_(b, c == node->child ? "" : " ");
            else
                put_indent(b, depth + 1);
            if (c->key) {
                put_string(b, c->key);
                puts_(b, ": ");
            }
            put_value(b, c, depth + 1);
            if (c->next)
                puts_(b, ",");
        }
        if (!inline_ && node->child)
            put_indent(b, depth);
        puts_(b, node->type == JSON_ARR ? "]" : "}");
        break;
    }
    }
}

char *json_write(const struct json *node)
{
    struct buf b = {0};
    put_value(&b, node, 0);
    puts_(&b, "\n");
    if (b.failed) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

struct json *json_get(const struct json *obj, const char *key)
{
    if (!obj || obj->type != JSON_OBJ)
        return NULL;
    for (struct json *c = obj->child; c; c = c->next)
        if (!strcmp(c->key, key))
            return c;
    return NULL;
}

struct json *json_at(const struct json *arr, int index)
{
    if (!arr || arr->type != JSON_ARR)
        return NULL;
    struct json *c = arr->child;
    for (; c && index > 0; index--)
        c = c->next;
    return index == 0 ? c : NULL;
}

int json_len(const struct json *arr)
{
    int n = 0;
    if (arr && arr->type == JSON_ARR)
        for (struct json *c = arr->child; c; c = c->next)
            n++;
    return n;
}

double json_num(const struct json *obj, const char *key, double fallback)
{
    struct json *v = json_get(obj, key);
    return v && v->type == JSON_NUM ? v->num : fallback;
}

const char *json_str(const struct json *obj, const char *key, const char *fallback)
{
    struct json *v = json_get(obj, key);
    return v && v->type == JSON_STR ? v->str : fallback;
}

/* Finds the member, or appends a null one, ready to take a new value. */
static struct json *member(struct json *obj, const char *key)
{
    struct json *v = json_get(obj, key), **tail;
    if (v) {
        json_free(v->child);
        free(v->str);
        v->child = NULL;
        v->str = NULL;
        v->type = JSON_NULL;
        return v;
    }
    if (!obj || obj->type != JSON_OBJ || !(v = new_node(JSON_NULL)) || !(v->key = strdup(key))) {
        free(v);
        return NULL;
    }
    for (tail = &obj->child; *tail; tail = &(*tail)->next)
        ;
    *tail = v;
    return v;
}

int json_set_num(struct json *obj, const char *key, double value)
{
    struct json *v = member(obj, key);
    if (!v)
        return -1;
    v->type = JSON_NUM;
    v->num = value;
    return 0;
}

int json_set_str(struct json *obj, const char *key, const char *value)
{
    struct json *v = member(obj, key);
    if (!v || !(v->str = strdup(value)))
        return -1;
    v->type = JSON_STR;
    return 0;
}
