/* Peer for synchub's fan-out benchmark: a single-threaded epoll WebSocket broadcast server in C, the floor.
 *
 *   gcc -O2 -Wall -Wextra -o c_server c_server.c && ./c_server <port>
 *
 * (servers.py builds it into bench/peers/build/ on first use.) Binds 127.0.0.1 only, backlog 4096, raises
 * its open-file soft limit to the hard limit, and prints "ready" on stdout once it listens.
 *
 * - GET /ws: RFC 6455 handshake (Sec-WebSocket-Accept = base64(SHA-1(key + GUID)), both implemented here,
 *   so it links against libc only). Client frames are read and discarded (data frame payloads are skipped as
 *   they arrive, never buffered); a ping is answered with a pong, a close with a close, then the socket is
 *   dropped. No extensions (no compression).
 * - POST /publish (Content-Length body): the body is framed once as one unmasked text frame, and that frame
 *   is handed to every WebSocket client with one write() per client: no coalescing, no batching. Answers
 *   204 on the same HTTP connection, which stays open (HTTP/1.1 keep-alive, pipelining allowed).
 * - GET /stats: {"clients": n, "peer": "c-epoll"}.
 *
 * Sockets are non-blocking and level-triggered. When a write to a client would block, the rest is kept in
 * that connection's output buffer and flushed on EPOLLOUT; later frames are appended behind it, in order. A
 * client with more than 4 MiB pending is dropped. Per-connection state is one 48-byte struct: input and output
 * buffers are allocated only while they hold something, and freed once empty, so an idle client costs the
 * struct plus the kernel's socket. SIGTERM/SIGINT (through a signalfd) end the loop; everything is closed and
 * freed and the exit status is 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define PEER "c-epoll"
#define BACKLOG 4096
#define MAX_EVENTS 1024
#define MAX_HEADER (16u * 1024u)                   /* request line + headers */
#define MAX_BODY (16u * 1024u * 1024u)             /* POST /publish body */
#define MAX_IN (MAX_HEADER + MAX_BODY)             /* one connection's unparsed input */
#define MAX_OUT (4u * 1024u * 1024u)               /* one connection's pending output: beyond, dropped */
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define NONE UINT32_MAX

/* -- SHA-1 (FIPS 180-4) and base64, for the handshake ------------------------------------------------ */

static uint32_t rol32(uint32_t x, unsigned k) { return (x << k) | (x >> (32u - k)); }

static void sha1_block(uint32_t h[5], const uint8_t *p) {
    uint32_t w[80];
    for (unsigned i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               (uint32_t)p[4 * i + 3];
    for (unsigned i = 16; i < 80; i++) w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (unsigned i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999u;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1u;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDCu;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6u;
        }
        uint32_t t = rol32(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol32(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
    size_t i = 0;
    for (; i + 64 <= len; i += 64) sha1_block(h, msg + i);
    uint8_t tail[128] = {0};
    size_t rest = len - i, tail_len = rest + 9 <= 64 ? 64 : 128;
    memcpy(tail, msg + i, rest);
    tail[rest] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (unsigned j = 0; j < 8; j++) tail[tail_len - 1 - j] = (uint8_t)(bits >> (8 * j));
    sha1_block(h, tail);
    if (tail_len == 128) sha1_block(h, tail + 64);
    for (unsigned j = 0; j < 5; j++) {
        out[4 * j] = (uint8_t)(h[j] >> 24);
        out[4 * j + 1] = (uint8_t)(h[j] >> 16);
        out[4 * j + 2] = (uint8_t)(h[j] >> 8);
        out[4 * j + 3] = (uint8_t)h[j];
    }
}

/* base64 of n bytes into out (4 * ceil(n / 3) + 1 bytes, NUL-terminated). */
static void base64(const uint8_t *in, size_t n, char *out) {
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = abc[(v >> 18) & 63];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = i + 1 < n ? abc[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? abc[v & 63] : '=';
    }
    out[o] = '\0';
}

/* Sec-WebSocket-Accept for a key (out: 29 bytes). */
static void ws_accept(const char *key, size_t key_len, char out[29]) {
    uint8_t buf[128], digest[20];
    memcpy(buf, key, key_len);
    memcpy(buf + key_len, WS_GUID, sizeof WS_GUID - 1);
    sha1(buf, key_len + sizeof WS_GUID - 1, digest);
    base64(digest, sizeof digest, out);
}

/* -- buffers ------------------------------------------------------------------------------------------ */

struct buf {
    size_t off, len, cap; /* data[off .. off + len) is pending */
    char data[];
};

/* Append n bytes; false if that would take the buffer past max (or memory runs out). */
static int buf_append(struct buf **pb, const char *p, size_t n, size_t max) {
    struct buf *b = *pb;
    size_t len = b ? b->len : 0;
    if (len + n > max) return 0;
    if (b && b->off + len + n <= b->cap) {
        memcpy(b->data + b->off + len, p, n);
        b->len += n;
        return 1;
    }
    if (b && len + n <= b->cap) { /* room once compacted */
        memmove(b->data, b->data + b->off, len);
        b->off = 0;
        memcpy(b->data + len, p, n);
        b->len += n;
        return 1;
    }
    size_t cap = b ? b->cap * 2 : 256;
    while (cap < len + n) cap *= 2;
    if (cap > max) cap = max;
    struct buf *nb = malloc(sizeof *nb + cap);
    if (!nb) return 0;
    if (b) memcpy(nb->data, b->data + b->off, len);
    memcpy(nb->data + len, p, n);
    nb->off = 0;
    nb->len = len + n;
    nb->cap = cap;
    free(b);
    *pb = nb;
    return 1;
}

/* Drop the first n pending bytes; the buffer is freed once empty. */
static void buf_consume(struct buf **pb, size_t n) {
    struct buf *b = *pb;
    b->off += n;
    b->len -= n;
    if (b->len == 0) {
        free(b);
        *pb = NULL;
    }
}

/* -- connections -------------------------------------------------------------------------------------- */

enum { S_HTTP, S_WS, S_CLOSING };
enum { F_CLOSED = 1, F_CLOSE_AFTER_FLUSH = 2, F_WANT_OUT = 4 };

struct conn {
    int fd;
    uint8_t state, flags;
    uint32_t all_idx;    /* in conns[] */
    uint32_t client_idx; /* in clients[] while a WebSocket client, else NONE */
    uint64_t skip;       /* payload bytes of the current client data frame still to discard */
    struct buf *in, *out;
    struct conn *next_dead;
};

static int ep = -1;
static struct conn **conns, **clients; /* every connection; the WebSocket clients (broadcast targets) */
static uint32_t nconns, cap_conns, nclients, cap_clients;
static struct conn *dead; /* closed this turn, freed after it (later events of the batch may name them) */
static char listen_tag, signal_tag;
static char rbuf[64 * 1024];

static int push(struct conn ***arr, uint32_t *n, uint32_t *cap, struct conn *c, uint32_t *idx) {
    if (*n == *cap) {
        uint32_t ncap = *cap ? *cap * 2 : 1024;
        struct conn **na = realloc(*arr, ncap * sizeof *na);
        if (!na) return 0;
        *arr = na;
        *cap = ncap;
    }
    *idx = *n;
    (*arr)[(*n)++] = c;
    return 1;
}

static void client_remove(struct conn *c) {
    if (c->client_idx == NONE) return;
    struct conn *last = clients[--nclients];
    clients[c->client_idx] = last;
    last->client_idx = c->client_idx;
    c->client_idx = NONE;
}

static void conn_close(struct conn *c) {
    if (c->flags & F_CLOSED) return;
    c->flags |= F_CLOSED;
    close(c->fd);
    client_remove(c);
    struct conn *last = conns[--nconns];
    conns[c->all_idx] = last;
    last->all_idx = c->all_idx;
    free(c->in);
    free(c->out);
    c->in = c->out = NULL;
    c->next_dead = dead;
    dead = c;
}

static void set_want_out(struct conn *c, int want) {
    if (!!(c->flags & F_WANT_OUT) == !!want) return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        conn_close(c);
        return;
    }
    c->flags = (uint8_t)(want ? c->flags | F_WANT_OUT : c->flags & ~F_WANT_OUT);
}

/* One write() of the whole message (behind what is already pending, if anything); the rest is buffered.
 * False if the connection was dropped. */
static int conn_send(struct conn *c, const char *p, size_t n) {
    if (c->flags & F_CLOSED) return 0;
    if (c->out) {
        if (!buf_append(&c->out, p, n, MAX_OUT)) {
            conn_close(c);
            return 0;
        }
        return 1;
    }
    ssize_t w = write(c->fd, p, n);
    if (w == (ssize_t)n) return 1;
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            conn_close(c);
            return 0;
        }
        w = 0;
    }
    if (!buf_append(&c->out, p + w, n - (size_t)w, MAX_OUT)) {
        conn_close(c);
        return 0;
    }
    set_want_out(c, 1);
    return !(c->flags & F_CLOSED);
}

static void conn_close_after_flush(struct conn *c) {
    client_remove(c);
    c->state = S_CLOSING;
    if (c->out)
        c->flags |= F_CLOSE_AFTER_FLUSH;
    else
        conn_close(c);
}

static void on_writable(struct conn *c) {
    if (!c->out) {
        set_want_out(c, 0);
        return;
    }
    ssize_t w = write(c->fd, c->out->data + c->out->off, c->out->len);
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) conn_close(c);
        return;
    }
    buf_consume(&c->out, (size_t)w);
    if (c->out) return;
    if (c->flags & F_CLOSE_AFTER_FLUSH)
        conn_close(c);
    else
        set_want_out(c, 0);
}

/* -- WebSocket ---------------------------------------------------------------------------------------- */

static size_t frame_header(uint8_t *h, uint8_t first, size_t n) {
    h[0] = first;
    if (n < 126) {
        h[1] = (uint8_t)n;
        return 2;
    }
    if (n < 65536) {
        h[1] = 126;
        h[2] = (uint8_t)(n >> 8);
        h[3] = (uint8_t)n;
        return 4;
    }
    h[1] = 127;
    for (unsigned i = 0; i < 8; i++) h[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
    return 10;
}

static void ws_close_with(struct conn *c, uint16_t code) {
    uint8_t f[4] = {0x88, 2, (uint8_t)(code >> 8), (uint8_t)code};
    conn_send(c, (const char *)f, sizeof f);
    if (!(c->flags & F_CLOSED)) conn_close_after_flush(c);
}

/* One frame (or part of a data frame's payload) from a client: bytes consumed, 0 when more are needed. */
static size_t ws_step(struct conn *c, const uint8_t *d, size_t len) {
    if (c->skip) {
        size_t k = c->skip < len ? (size_t)c->skip : len;
        c->skip -= k;
        return k;
    }
    if (len < 2) return 0;
    unsigned opcode = d[0] & 0x0F, masked = d[1] & 0x80;
    uint64_t plen = d[1] & 0x7F;
    size_t hl = 2;
    if (plen == 126) {
        if (len < 4) return 0;
        plen = (uint64_t)d[2] << 8 | d[3];
        hl = 4;
    } else if (plen == 127) {
        if (len < 10) return 0;
        plen = 0;
        for (unsigned i = 0; i < 8; i++) plen = plen << 8 | d[2 + i];
        hl = 10;
    }
    if (!masked || (d[0] & 0x70)) { /* clients must mask; no extension was agreed */
        ws_close_with(c, 1002);
        return len;
    }
    hl += 4;
    if (len < hl) return 0;
    if (opcode < 8) { /* continuation, text, binary: read and discarded */
        if (opcode > 2) {
            ws_close_with(c, 1002);
            return len;
        }
        c->skip = plen;
        return hl;
    }
    if (plen > 125 || !(d[0] & 0x80)) { /* control frames are short and never fragmented */
        ws_close_with(c, 1002);
        return len;
    }
    if (len < hl + plen) return 0;
    uint8_t reply[2 + 125];
    const uint8_t *mask = d + hl - 4;
    for (size_t i = 0; i < plen; i++) reply[2 + i] = d[hl + i] ^ mask[i & 3];
    reply[1] = (uint8_t)plen;
    if (opcode == 0x9) { /* ping: pong with its payload */
        reply[0] = 0x8A;
        conn_send(c, (const char *)reply, 2 + plen);
    } else if (opcode == 0x8) { /* close: echo its status code, then drop the socket */
        reply[0] = 0x88;
        reply[1] = plen >= 2 ? 2 : 0;
        conn_send(c, (const char *)reply, 2 + reply[1]);
        if (!(c->flags & F_CLOSED)) conn_close_after_flush(c);
    } else if (opcode != 0xA) { /* a pong is ignored; other control opcodes are reserved */
        ws_close_with(c, 1002);
    }
    return hl + plen;
}

static void broadcast(const char *body, size_t n) {
    static char small[64 * 1024];
    size_t size = n + 10;
    char *frame = size <= sizeof small ? small : malloc(size);
    if (!frame) return;
    size_t hl = frame_header((uint8_t *)frame, 0x81, n);
    memcpy(frame + hl, body, n);
    /* Backwards: a client dropped here is swapped with the last one, which has had its frame already. */
    for (uint32_t i = nclients; i-- > 0;) conn_send(clients[i], frame, hl + n);
    if (frame != small) free(frame);
}

/* -- HTTP --------------------------------------------------------------------------------------------- */

static int ieq(const char *p, size_t n, const char *s) { return n == strlen(s) && strncasecmp(p, s, n) == 0; }

/* Whether a comma-separated header value holds token s (case-insensitive). */
static int has_token(const char *p, size_t n, const char *s) {
    size_t i = 0;
    while (i < n) {
        while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == ',')) i++;
        size_t start = i;
        while (i < n && p[i] != ',') i++;
        size_t end = i;
        while (end > start && (p[end - 1] == ' ' || p[end - 1] == '\t')) end--;
        if (ieq(p + start, end - start, s)) return 1;
    }
    return 0;
}

static void respond(struct conn *c, const char *status, const char *type, const char *body, int keep) {
    char out[1024];
    size_t blen = body ? strlen(body) : 0;
    int n;
    if (body)
        n = snprintf(out, sizeof out, "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n%s", status,
                     type, blen, keep ? "" : "Connection: close\r\n", body);
    else if (strncmp(status, "204", 3) == 0)
        n = snprintf(out, sizeof out, "HTTP/1.1 %s\r\n%s\r\n", status, keep ? "" : "Connection: close\r\n");
    else
        n = snprintf(out, sizeof out, "HTTP/1.1 %s\r\nContent-Length: 0\r\n%s\r\n", status,
                     keep ? "" : "Connection: close\r\n");
    if (n < 0 || (size_t)n >= sizeof out) n = 0;
    conn_send(c, out, (size_t)n);
    if (!keep && !(c->flags & F_CLOSED)) conn_close_after_flush(c);
}

/* One request: bytes consumed, 0 when more are needed. */
static size_t http_step(struct conn *c, const char *d, size_t len) {
    const char *end = memmem(d, len < MAX_HEADER ? len : MAX_HEADER, "\r\n\r\n", 4);
    if (!end) {
        if (len >= MAX_HEADER) {
            respond(c, "431 Request Header Fields Too Large", NULL, NULL, 0);
            return len;
        }
        return 0;
    }
    size_t hlen = (size_t)(end - d) + 4;
    /* request line: METHOD SP TARGET SP VERSION */
    const char *eol = memchr(d, '\r', hlen);
    const char *sp1 = memchr(d, ' ', (size_t)(eol - d));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (!sp2) {
        respond(c, "400 Bad Request", NULL, NULL, 0);
        return len;
    }
    const char *method = d, *target = sp1 + 1, *version = sp2 + 1;
    size_t method_len = (size_t)(sp1 - d), target_len = (size_t)(sp2 - target);
    const char *q = memchr(target, '?', target_len);
    size_t path_len = q ? (size_t)(q - target) : target_len;
    int http10 = ieq(version, (size_t)(eol - version), "HTTP/1.0");
    int keep = !http10, upgrade = 0, chunked = 0, have_length = 0;
    uint64_t length = 0;
    const char *key = NULL;
    size_t key_len = 0;
    for (const char *line = eol + 2; line < end;) {
        const char *le = memchr(line, '\r', (size_t)(end + 2 - line));
        const char *colon = memchr(line, ':', (size_t)(le - line));
        if (colon) {
            size_t name_len = (size_t)(colon - line);
            const char *v = colon + 1, *ve = le;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            size_t vlen = (size_t)(ve - v);
            if (ieq(line, name_len, "content-length")) {
                have_length = 1;
                length = 0;
                for (size_t i = 0; i < vlen; i++) {
                    if (v[i] < '0' || v[i] > '9' || length > MAX_BODY) {
                        length = (uint64_t)MAX_BODY + 1;
                        break;
                    }
                    length = length * 10 + (uint64_t)(v[i] - '0');
                }
                if (vlen == 0) length = (uint64_t)MAX_BODY + 1;
            } else if (ieq(line, name_len, "transfer-encoding")) {
                chunked = 1;
            } else if (ieq(line, name_len, "connection")) {
                if (has_token(v, vlen, "close")) keep = 0;
                if (has_token(v, vlen, "keep-alive")) keep = 1;
            } else if (ieq(line, name_len, "upgrade")) {
                upgrade = has_token(v, vlen, "websocket");
            } else if (ieq(line, name_len, "sec-websocket-key")) {
                key = v;
                key_len = vlen;
            }
        }
        line = le + 2;
    }
    if (chunked) {
        respond(c, "411 Length Required", NULL, NULL, 0);
        return len;
    }
    if (length > MAX_BODY) {
        respond(c, have_length ? "413 Content Too Large" : "400 Bad Request", NULL, NULL, 0);
        return len;
    }
    if (len < hlen + length) return 0;
    const char *body = d + hlen;
    size_t used = hlen + (size_t)length;

    if (ieq(method, method_len, "POST") && ieq(target, path_len, "/publish")) {
        broadcast(body, (size_t)length);
        respond(c, "204 No Content", NULL, NULL, keep);
    } else if (ieq(method, method_len, "GET") && ieq(target, path_len, "/stats")) {
        char json[96];
        snprintf(json, sizeof json, "{\"clients\": %u, \"peer\": \"" PEER "\"}", nclients);
        respond(c, "200 OK", "application/json", json, keep);
    } else if (ieq(method, method_len, "GET") && ieq(target, path_len, "/ws")) {
        if (!upgrade || !key || key_len == 0 || key_len > 64) {
            respond(c, "400 Bad Request", NULL, NULL, 0);
            return len;
        }
        char accept[29], out[256];
        ws_accept(key, key_len, accept);
        int n = snprintf(out, sizeof out,
                         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Accept: %s\r\n\r\n",
                         accept);
        if (!conn_send(c, out, (size_t)n)) return len;
        if (!push(&clients, &nclients, &cap_clients, c, &c->client_idx)) {
            conn_close(c);
            return len;
        }
        c->state = S_WS;
    } else {
        respond(c, "404 Not Found", NULL, NULL, keep);
    }
    return used;
}

/* -- the loop ----------------------------------------------------------------------------------------- */

/* Parse what can be parsed of d; bytes consumed. */
static size_t process(struct conn *c, const char *d, size_t len) {
    size_t pos = 0;
    while (pos < len && !(c->flags & F_CLOSED)) {
        size_t k;
        if (c->state == S_HTTP)
            k = http_step(c, d + pos, len - pos);
        else if (c->state == S_WS)
            k = ws_step(c, (const uint8_t *)d + pos, len - pos);
        else
            k = len - pos; /* closing: input is ignored */
        if (k == 0) break;
        pos += k;
    }
    return pos;
}

static void on_readable(struct conn *c) {
    ssize_t n = read(c->fd, rbuf, sizeof rbuf);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) conn_close(c);
        return;
    }
    if (!c->in) { /* the common case: parsed straight from the shared read buffer */
        size_t used = process(c, rbuf, (size_t)n);
        if (!(c->flags & F_CLOSED) && used < (size_t)n && !buf_append(&c->in, rbuf + used, (size_t)n - used, MAX_IN))
            conn_close(c);
        return;
    }
    if (!buf_append(&c->in, rbuf, (size_t)n, MAX_IN)) {
        if (c->state == S_HTTP) respond(c, "413 Content Too Large", NULL, NULL, 0);
        conn_close(c);
        return;
    }
    size_t used = process(c, c->in->data + c->in->off, c->in->len);
    if (!(c->flags & F_CLOSED) && used) buf_consume(&c->in, used);
}

static int reserve_fd = -1; /* closed to accept (and drop) a connection when out of file descriptors */

static void on_accept(int lfd) {
    for (int i = 0; i < 256; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if ((errno == EMFILE || errno == ENFILE) && reserve_fd >= 0) {
                close(reserve_fd);
                fd = accept(lfd, NULL, NULL);
                if (fd >= 0) close(fd);
                reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                continue;
            }
            return; /* EAGAIN, or a connection that died in the queue */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->client_idx = NONE;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (!push(&conns, &nconns, &cap_conns, c, &c->all_idx) || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            if (nconns && conns[nconns - 1] == c) nconns--;
            close(fd);
            free(c);
        }
    }
}

static void raise_nofile_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == rl.rlim_max) return;
    rlim_t target = rl.rlim_max;
    rl.rlim_cur = target == RLIM_INFINITY ? (rlim_t)1 << 20 : target;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) perror("setrlimit(RLIMIT_NOFILE)");
}

int main(int argc, char **argv) {
    char *endp = NULL;
    long port = argc == 2 ? strtol(argv[1], &endp, 10) : 0;
    if (argc != 2 || *endp != '\0' || port <= 0 || port > 65535) {
        fprintf(stderr, "usage: %s <port>\n", argv[0]);
        return 2;
    }
    raise_nofile_limit();
    signal(SIGPIPE, SIG_IGN);
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    if (sigprocmask(SIG_BLOCK, &stop, NULL) < 0) return perror("sigprocmask"), 1;
    int sfd = signalfd(-1, &stop, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) return perror("signalfd"), 1;

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) return perror("socket"), 1;
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) return perror("bind"), 1;
    if (listen(lfd, BACKLOG) < 0) return perror("listen"), 1;

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) return perror("epoll_create1"), 1;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listen_tag};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) return perror("epoll_ctl"), 1;
    ev.data.ptr = &signal_tag;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev) < 0) return perror("epoll_ctl"), 1;
    reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

    printf("ready\n"); /* start_peer waits for it */
    fflush(stdout);

    static struct epoll_event events[MAX_EVENTS];
    int running = 1;
    while (running) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            void *p = events[i].data.ptr;
            uint32_t e = events[i].events;
            if (p == &listen_tag) {
                on_accept(lfd);
            } else if (p == &signal_tag) {
                running = 0;
            } else {
                struct conn *c = p;
                if (c->flags & F_CLOSED) continue; /* closed earlier in this batch */
                if (e & EPOLLERR) {
                    conn_close(c);
                    continue;
                }
                if (e & EPOLLOUT) on_writable(c);
                if (!(c->flags & F_CLOSED) && (e & (EPOLLIN | EPOLLHUP))) on_readable(c);
            }
        }
        while (dead) {
            struct conn *c = dead;
            dead = c->next_dead;
            free(c);
        }
    }

    while (nconns) conn_close(conns[nconns - 1]);
    while (dead) {
        struct conn *c = dead;
        dead = c->next_dead;
        free(c);
    }
    free(conns);
    free(clients);
    close(lfd);
    close(sfd);
    close(ep);
    if (reserve_fd >= 0) close(reserve_fd);
    return 0;
}
