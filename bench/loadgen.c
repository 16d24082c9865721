/*
 * loadgen: closed-loop UDP load generator for STUN-framed request/reply servers.
 *
 * N non-blocking UDP sockets, each connected to one loopback server address,
 * each keeping W requests outstanding.  Every request is a copy of a template
 * (raw STUN bytes read from a file) with its 12-byte transaction id replaced by
 * a unique value; when the template ends in FINGERPRINT the CRC is recomputed.
 * A reply is matched to its request by transaction id, its latency recorded,
 * and the slot immediately re-issued.  A request unanswered after --timeout-ms
 * is counted lost and re-issued.  After a warm-up the generator measures for
 * --duration seconds and prints one JSON line on stdout.
 *
 * Template file: one line per socket group, "<local_port or 0> <hex bytes>".
 * Socket i uses line i % lines; a non-zero local_port makes that socket bind
 * 127.0.0.1:<local_port> (peerlink methods are only accepted from the address
 * a peer registered from).  Blank lines and lines starting with '#' are skipped.
 *
 * Transaction id layout (bytes 8..20 of the header):
 *   8..16  u64 sequence number, unique per request (run-specific base)
 *   16..18 u16 socket index
 *   18..20 u16 slot index within the socket's window
 * so a reply is matched in O(1) and a late reply to a re-issued slot is
 * recognised (sequence mismatch) and counted as stale instead of a reply.
 *
 * Only addresses in 127.0.0.0/8 are accepted as the target.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_TEMPLATE 2048
#define MAX_WINDOW 4096
#define RX_BATCH 64
#define RX_BUF 4096
#define STUN_HEADER 20
#define FINGERPRINT_TYPE 0x8028
#define FINGERPRINT_XOR 0x5354554Eu
#define SCAN_INTERVAL_NS 10000000ull /* timeout scan every 10 ms */

enum slot_state { SLOT_PENDING = 0, SLOT_INFLIGHT = 1 };

struct slot {
    uint64_t seq;
    uint64_t sent_ns;
    int state;
};

struct tmpl {
    uint8_t bytes[MAX_TEMPLATE];
    size_t len;
    size_t fp_offset; /* offset of the FINGERPRINT attribute, 0 if none */
    uint16_t local_port;
};

struct conn {
    int fd;
    const struct tmpl *tmpl;
    struct slot *slots;
    int npending;
    uint8_t *txbufs; /* window * template length, one outgoing copy per slot */
    struct mmsghdr *txmsgs;
    struct iovec *txiov;
};

struct stats {
    uint64_t sent, replies, lost, stale, send_errors, recv_errors;
    uint64_t success_responses, error_responses, other_replies;
    uint32_t *lat_ns;
    size_t nlat, caplat;
};

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- CRC-32 (IEEE, reflected, as zlib and RFC 8489 FINGERPRINT use) ---- */

static uint32_t crc_table[4][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    /* slicing-by-4 tables: a request is CRC'd on every send, keep it cheap */
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = crc_table[0][i];
        for (int t = 1; t < 4; t++) {
            c = crc_table[0][c & 0xFF] ^ (c >> 8);
            crc_table[t][i] = c;
        }
    }
}

static uint32_t crc32_ieee(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n >= 4) {
        c ^= (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        c = crc_table[3][c & 0xFF] ^ crc_table[2][(c >> 8) & 0xFF] ^
            crc_table[1][(c >> 16) & 0xFF] ^ crc_table[0][c >> 24];
        p += 4;
        n -= 4;
    }
    while (n--)
        c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void put_be16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint16_t get_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint64_t get_be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void put_be64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* ---- templates ---- */

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Walk the attributes; return the offset of a trailing FINGERPRINT or 0. */
static size_t find_fingerprint(const uint8_t *b, size_t len) {
    size_t off = STUN_HEADER, last = 0;
    while (off + 4 <= len) {
        size_t alen = get_be16(b + off + 2);
        size_t next = off + 4 + ((alen + 3) & ~(size_t)3);
        if (next > len) return 0; /* malformed: treat as opaque bytes */
        last = off;
        off = next;
    }
    if (off != len || last == 0) return 0;
    if (get_be16(b + last) == FINGERPRINT_TYPE && get_be16(b + last + 2) == 4 && last + 8 == len)
        return last;
    return 0;
}

static struct tmpl *load_templates(const char *path, int *count) {
    FILE *f = fopen(path, "r");
    if (!f) die("cannot open template file %s: %s", path, strerror(errno));
    struct tmpl *t = NULL;
    int n = 0, cap = 0, lineno = 0;
    char *line = NULL;
    size_t linecap = 0;
    ssize_t got;
    while ((got = getline(&line, &linecap, f)) >= 0) {
        lineno++;
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (*p == '\0' || *p == '\n' || *p == '#') continue;
        char *end;
        long port = strtol(p, &end, 10);
        if (end == p || port < 0 || port > 65535) die("%s:%d: bad local port", path, lineno);
        p = end;
        while (*p == ' ' || *p == '\t') p++;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            t = realloc(t, (size_t)cap * sizeof *t);
            if (!t) die("out of memory");
        }
        struct tmpl *cur = &t[n];
        memset(cur, 0, sizeof *cur);
        cur->local_port = (uint16_t)port;
        size_t len = 0;
        while (hexval(p[0]) >= 0) {
            if (hexval(p[1]) < 0) die("%s:%d: odd number of hex digits", path, lineno);
            if (len == MAX_TEMPLATE) die("%s:%d: template longer than %d bytes", path, lineno, MAX_TEMPLATE);
            cur->bytes[len++] = (uint8_t)(hexval(p[0]) << 4 | hexval(p[1]));
            p += 2;
        }
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
        if (*p != '\0') die("%s:%d: unexpected character '%c' in hex", path, lineno, *p);
        if (len < STUN_HEADER) die("%s:%d: template shorter than a STUN header", path, lineno);
        cur->len = len;
        cur->fp_offset = find_fingerprint(cur->bytes, len);
        n++;
    }
    free(line);
    fclose(f);
    if (n == 0) die("template file %s has no templates", path);
    *count = n;
    return t;
}

/* ---- requests ---- */

static uint64_t next_seq;

/* Fill slot `s` of connection `ci` with a fresh request in its tx buffer. */
static void prepare_request(struct conn *c, int ci, int s) {
    const struct tmpl *t = c->tmpl;
    uint8_t *b = c->txbufs + (size_t)s * t->len;
    memcpy(b, t->bytes, t->len);
    uint64_t seq = next_seq++;
    put_be64(b + 8, seq);
    put_be16(b + 16, (uint16_t)ci);
    put_be16(b + 18, (uint16_t)s);
    if (t->fp_offset)
        put_be32(b + t->fp_offset + 4, crc32_ieee(b, t->fp_offset) ^ FINGERPRINT_XOR);
    c->slots[s].seq = seq;
}

/* Send every pending slot of one connection in one sendmmsg batch. */
static void flush_pending(struct conn *c, int ci, int window, int measuring, struct stats *st) {
    if (c->npending == 0) return;
    int idx[MAX_WINDOW];
    int n = 0;
    for (int s = 0; s < window; s++) {
        if (c->slots[s].state != SLOT_PENDING) continue;
        prepare_request(c, ci, s);
        c->txiov[n].iov_base = c->txbufs + (size_t)s * c->tmpl->len;
        c->txiov[n].iov_len = c->tmpl->len;
        memset(&c->txmsgs[n].msg_hdr, 0, sizeof c->txmsgs[n].msg_hdr);
        c->txmsgs[n].msg_hdr.msg_iov = &c->txiov[n];
        c->txmsgs[n].msg_hdr.msg_iovlen = 1;
        idx[n++] = s;
    }
    int done = 0;
    while (done < n) {
        int r = sendmmsg(c->fd, c->txmsgs + done, (unsigned)(n - done), 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS) st->send_errors++;
            break; /* leave the rest pending; retried on the next scan */
        }
        uint64_t t = now_ns();
        for (int k = done; k < done + r; k++) {
            struct slot *sl = &c->slots[idx[k]];
            sl->state = SLOT_INFLIGHT;
            sl->sent_ns = t;
            c->npending--;
            if (measuring) st->sent++;
        }
        done += r;
    }
}

static void record_latency(struct stats *st, uint64_t ns) {
    if (st->nlat == st->caplat) {
        st->caplat = st->caplat ? st->caplat * 2 : 1 << 20;
        st->lat_ns = realloc(st->lat_ns, st->caplat * sizeof *st->lat_ns);
        if (!st->lat_ns) die("out of memory");
    }
    st->lat_ns[st->nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static uint8_t rxbufs[RX_BATCH][RX_BUF];
static struct mmsghdr rxmsgs[RX_BATCH];
static struct iovec rxiov[RX_BATCH];

/* Drain up to a few batches of replies from one connection. */
static void handle_readable(struct conn *c, int ci, int window, int measuring, struct stats *st) {
    for (int round = 0; round < 4; round++) {
        for (int k = 0; k < RX_BATCH; k++) {
            rxiov[k].iov_base = rxbufs[k];
            rxiov[k].iov_len = RX_BUF;
            memset(&rxmsgs[k].msg_hdr, 0, sizeof rxmsgs[k].msg_hdr);
            rxmsgs[k].msg_hdr.msg_iov = &rxiov[k];
            rxmsgs[k].msg_hdr.msg_iovlen = 1;
        }
        int r = recvmmsg(c->fd, rxmsgs, RX_BATCH, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            st->recv_errors++; /* e.g. ECONNREFUSED from an ICMP port unreachable */
            break;
        }
        uint64_t t = now_ns();
        for (int k = 0; k < r; k++) {
            const uint8_t *b = rxbufs[k];
            size_t len = rxmsgs[k].msg_len;
            if (len < STUN_HEADER) {
                st->stale++;
                continue;
            }
            uint64_t seq = get_be64(b + 8);
            int sock = get_be16(b + 16), s = get_be16(b + 18);
            if (sock != ci || s >= window || c->slots[s].state != SLOT_INFLIGHT || c->slots[s].seq != seq) {
                st->stale++; /* a late reply to a request already counted lost */
                continue;
            }
            struct slot *sl = &c->slots[s];
            if (measuring) {
                st->replies++;
                record_latency(st, t - sl->sent_ns);
                uint16_t type = get_be16(b);
                int cls = ((type >> 7) & 2) | ((type >> 4) & 1);
                if (cls == 2) st->success_responses++;
                else if (cls == 3) st->error_responses++;
                else st->other_replies++;
            }
            sl->state = SLOT_PENDING;
            c->npending++;
        }
        if (r < RX_BATCH) break;
    }
    flush_pending(c, ci, window, measuring, st);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double percentile_us(const uint32_t *sorted, size_t n, double q) {
    if (n == 0) return 0.0;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    if (i >= n) i = n - 1;
    return sorted[i] / 1000.0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P --templates FILE [--host 127.0.0.1] [--sockets N] [--window W]\n"
            "               [--warmup S] [--duration S] [--timeout-ms MS]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *tmpl_path = NULL;
    int port = 0, nsock = 32, window = 4, timeout_ms = 1000;
    double warmup = 2.0, duration = 5.0;
    static const struct option opts[] = {
        {"host", required_argument, 0, 'h'},     {"port", required_argument, 0, 'p'},
        {"templates", required_argument, 0, 't'}, {"sockets", required_argument, 0, 'n'},
        {"window", required_argument, 0, 'w'},   {"warmup", required_argument, 0, 'u'},
        {"duration", required_argument, 0, 'd'}, {"timeout-ms", required_argument, 0, 'o'},
        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 't': tmpl_path = optarg; break;
        case 'n': nsock = atoi(optarg); break;
        case 'w': window = atoi(optarg); break;
        case 'u': warmup = atof(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'o': timeout_ms = atoi(optarg); break;
        default: usage();
        }
    }
    if (!tmpl_path || port <= 0 || port > 65535) usage();
    if (nsock < 1 || nsock > 65535) die("--sockets must be 1..65535");
    if (window < 1 || window > MAX_WINDOW) die("--window must be 1..%d", MAX_WINDOW);
    if (duration <= 0 || warmup < 0 || timeout_ms < 1) die("bad --duration/--warmup/--timeout-ms");

    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &server.sin_addr) != 1) die("--host %s is not an IPv4 address", host);
    /* This tool floods its target: refuse anything but this machine's loopback. */
    if ((ntohl(server.sin_addr.s_addr) >> 24) != 127) die("--host must be in 127.0.0.0/8, got %s", host);

    crc_init();
    int ntmpl;
    struct tmpl *templates = load_templates(tmpl_path, &ntmpl);
    for (int i = 0; i < ntmpl; i++)
        if (templates[i].local_port && nsock > ntmpl)
            die("template line %d binds local port %u but --sockets %d > %d lines would reuse it",
                i + 1, templates[i].local_port, nsock, ntmpl);

    next_seq = (uint64_t)time(NULL) << 32; /* distinct across runs against one server */

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));
    struct conn *conns = calloc((size_t)nsock, sizeof *conns);
    if (!conns) die("out of memory");
    for (int i = 0; i < nsock; i++) {
        struct conn *c = &conns[i];
        c->tmpl = &templates[i % ntmpl];
        c->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) die("socket: %s", strerror(errno));
        struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons(c->tmpl->local_port)};
        local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(c->fd, (struct sockaddr *)&local, sizeof local) < 0)
            die("bind 127.0.0.1:%u: %s", c->tmpl->local_port, strerror(errno));
        /* connect: the kernel then drops datagrams from any other source */
        if (connect(c->fd, (struct sockaddr *)&server, sizeof server) < 0)
            die("connect: %s", strerror(errno));
        c->slots = calloc((size_t)window, sizeof *c->slots);
        c->txbufs = malloc((size_t)window * c->tmpl->len);
        c->txmsgs = calloc((size_t)window, sizeof *c->txmsgs);
        c->txiov = calloc((size_t)window, sizeof *c->txiov);
        if (!c->slots || !c->txbufs || !c->txmsgs || !c->txiov) die("out of memory");
        c->npending = window; /* every slot starts pending (state 0) */
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    }

    struct stats st = {0};
    struct epoll_event *events = calloc((size_t)nsock, sizeof *events);
    if (!events) die("out of memory");
    const uint64_t timeout_ns = (uint64_t)timeout_ms * 1000000u;
    const uint64_t t0 = now_ns();
    const uint64_t measure_start = t0 + (uint64_t)(warmup * 1e9);
    const uint64_t end = measure_start + (uint64_t)(duration * 1e9);
    uint64_t last_scan = t0;
    int measuring = warmup == 0;
    double cpu_start = measuring ? cpu_seconds() : 0.0;

    for (int i = 0; i < nsock; i++) flush_pending(&conns[i], i, window, measuring, &st);

    for (;;) {
        uint64_t t = now_ns();
        if (t >= end) break;
        if (!measuring && t >= measure_start) {
            measuring = 1;
            cpu_start = cpu_seconds();
        }
        uint64_t wait_ns = end - t;
        if (wait_ns > SCAN_INTERVAL_NS) wait_ns = SCAN_INTERVAL_NS;
        if (!measuring && measure_start - t < wait_ns) wait_ns = measure_start - t;
        int n = epoll_wait(ep, events, nsock, (int)((wait_ns + 999999) / 1000000));
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++) {
            int ci = (int)events[k].data.u32;
            handle_readable(&conns[ci], ci, window, measuring, &st);
        }
        t = now_ns();
        if (t - last_scan >= SCAN_INTERVAL_NS) {
            last_scan = t;
            for (int ci = 0; ci < nsock; ci++) {
                struct conn *c = &conns[ci];
                for (int s = 0; s < window; s++) {
                    struct slot *sl = &c->slots[s];
                    if (sl->state == SLOT_INFLIGHT && t - sl->sent_ns >= timeout_ns) {
                        if (measuring) st.lost++;
                        sl->state = SLOT_PENDING;
                        c->npending++;
                    }
                }
                flush_pending(c, ci, window, measuring, &st);
            }
        }
    }
    double cpu_used = cpu_seconds() - cpu_start;
    double elapsed = (double)(now_ns() - measure_start) / 1e9;

    int nfp = 0;
    for (int i = 0; i < ntmpl; i++) nfp += templates[i].fp_offset != 0;
    qsort(st.lat_ns, st.nlat, sizeof *st.lat_ns, cmp_u32);
    double sum = 0;
    for (size_t i = 0; i < st.nlat; i++) sum += st.lat_ns[i];
    printf("{\"sent\":%llu,\"replies\":%llu,\"lost\":%llu,\"replies_per_s\":%.1f,"
           "\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"mean_us\":%.1f,\"max_us\":%.1f,"
           "\"stale\":%llu,\"send_errors\":%llu,\"recv_errors\":%llu,"
           "\"success_responses\":%llu,\"error_responses\":%llu,\"other_replies\":%llu,"
           "\"sockets\":%d,\"window\":%d,\"templates\":%d,\"fingerprint_templates\":%d,"
           "\"duration_s\":%.3f,\"cpu_s\":%.3f}\n",
           (unsigned long long)st.sent, (unsigned long long)st.replies, (unsigned long long)st.lost,
           st.replies / elapsed, percentile_us(st.lat_ns, st.nlat, 0.50),
           percentile_us(st.lat_ns, st.nlat, 0.99), percentile_us(st.lat_ns, st.nlat, 0.999),
           st.nlat ? sum / (double)st.nlat / 1000.0 : 0.0,
           st.nlat ? st.lat_ns[st.nlat - 1] / 1000.0 : 0.0, (unsigned long long)st.stale,
           (unsigned long long)st.send_errors, (unsigned long long)st.recv_errors,
           (unsigned long long)st.success_responses, (unsigned long long)st.error_responses,
           (unsigned long long)st.other_replies, nsock, window, ntmpl,
           nfp, elapsed, cpu_used);
    return 0;
}
