/* The rendezvous server's optional compiled fast path (rendezvous/fastpath.py loads it with ctypes).
 *
 * It answers the two requests that make most of a busy server's traffic, byte for byte as the
 * Python path in rendezvous/core.py (ServerCore.answer_hot) does:
 *
 *   - a bare Binding request (no attributes but an optional FINGERPRINT), and
 *   - a REFRESH laid out as the peers send it (SESSION, optional TTL, optional FINGERPRINT) whose
 *     SESSION the Python side has already checked for that source address and registered here
 *     (fp_add_session); Python forgets it (fp_remove_session) whenever the peer's record changes.
 *
 * Everything else is "not mine" and goes to the Python path unchanged.  fp_answer is the pure part
 * (bytes and an address in, reply bytes out; the tests compare it with the Python path);
 * fp_serve is one wake-up of the socket: recvmmsg, fp_answer on each datagram, one sendmmsg for
 * the replies, and the list of the datagrams left for Python.  A plain C library (no Python
 * headers): built by hatch_build.py, and the server runs without it.
 *
 * Every length comes from the kernel or the datagram and is checked before use.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define FP_ABI_VERSION 1
#define SLOT 2048        /* bytes per datagram buffer, as rendezvous/mmsg.py */
#define NAME_SIZE 28     /* sizeof(struct sockaddr_in6) */
#define MAX_SOFTWARE 1024 /* SOFTWARE TLV bytes we accept (the reply must fit a slot) */
#define TOKEN_LENGTH 20  /* SESSION: 4-byte peer id + 16-byte MAC */

#define MAGIC_COOKIE 0x2112A442u
#define FINGERPRINT_XOR 0x5354554Eu
#define TYPE_BINDING_REQUEST 0x0001
#define TYPE_BINDING_SUCCESS 0x0101
#define TYPE_REFRESH_REQUEST 0x2002
#define TYPE_REFRESH_SUCCESS 0x2102
#define ATTR_XOR_MAPPED_ADDRESS 0x0020
#define ATTR_SESSION 0x4007
#define ATTR_TTL 0x4003
#define ATTR_FINGERPRINT 0x8028

/* An address as the Python side sees it: IPv4-mapped IPv6 is IPv4. */
typedef struct {
    uint8_t family; /* 4 or 6; 0: not an address we answer */
    uint16_t port;
    uint8_t ip[16]; /* 4 bytes used for IPv4 */
} fp_address;

typedef struct {
    uint32_t peer_id; /* 0: empty slot (ids start at 1) */
    fp_address address;
    uint8_t token[TOKEN_LENGTH];
} fp_entry;

typedef struct {
    uint8_t software[MAX_SOFTWARE];
    size_t software_length;
    uint32_t min_ttl, max_ttl, default_ttl;
    int answer_binding;
    int answer_refresh;
    /* Open addressing, linear probing, backward-shift deletion; capacity a power of two. */
    fp_entry *table;
    size_t capacity;
    size_t count;
    uint32_t crc_table[8][256];
    /* Set by fp_set_buffers: the mmsghdr arrays (wired to their names and data by Python). */
    struct mmsghdr *in;
    struct mmsghdr *out;
    unsigned batch;
    /* Outputs of the last fp_serve: indices of the datagrams left for Python, the refreshed
     * (peer id, granted TTL) pairs, and counters (see FP_COUNT_*). */
    uint16_t *others;
    uint32_t *refreshed;
    uint32_t *counts;
} fp_ctx;

enum { FP_COUNT_OTHERS, FP_COUNT_BINDINGS, FP_COUNT_REFRESHES, FP_COUNT_SEND_ERRORS, FP_COUNTS };

/* ------------------------------------------------------------------ CRC-32 (zlib's), slice by 8 */

static void crc_init(fp_ctx *c) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t v = n;
        for (int k = 0; k < 8; k++) v = (v & 1) ? 0xEDB88320u ^ (v >> 1) : v >> 1;
        c->crc_table[0][n] = v;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t v = c->crc_table[0][n];
        for (int t = 1; t < 8; t++) {
            v = c->crc_table[0][v & 0xFF] ^ (v >> 8);
            c->crc_table[t][n] = v;
        }
    }
}

static uint32_t crc32_of(const fp_ctx *c, const uint8_t *p, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    const uint32_t(*t)[256] = c->crc_table;
    while (n >= 8) {
        uint32_t a = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        crc = t[7][a & 0xFF] ^ t[6][(a >> 8) & 0xFF] ^ t[5][(a >> 16) & 0xFF] ^ t[4][a >> 24] ^ t[3][p[4]] ^
              t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--) crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

/* ------------------------------------------------------------------ bytes */

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}
static void put16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Read a sockaddr of `length` bytes as the Python side would (rendezvous/mmsg.py decode_name). */
static fp_address read_address(const uint8_t *name, size_t length) {
    fp_address a;
    memset(&a, 0, sizeof a);
    if (length < sizeof(sa_family_t)) return a;
    sa_family_t family;
    memcpy(&family, name, sizeof family);
    if (family == AF_INET && length >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in sin;
        memcpy(&sin, name, sizeof sin);
        a.family = 4;
        a.port = ntohs(sin.sin_port);
        memcpy(a.ip, &sin.sin_addr, 4);
    } else if (family == AF_INET6 && length >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, name, sizeof sin6);
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
        a.port = ntohs(sin6.sin6_port);
        if (memcmp(sin6.sin6_addr.s6_addr, mapped, 12) == 0) {
            a.family = 4;
            memcpy(a.ip, sin6.sin6_addr.s6_addr + 12, 4);
        } else {
            a.family = 6;
            memcpy(a.ip, sin6.sin6_addr.s6_addr, 16);
        }
    }
    return a;
}

static int same_address(const fp_address *a, const fp_address *b) {
    return a->family == b->family && a->port == b->port && memcmp(a->ip, b->ip, a->family == 4 ? 4 : 16) == 0;
}

/* XOR-MAPPED-ADDRESS TLV for `a` under transaction id `tid`; returns its length (12 or 24). */
static size_t put_xor_mapped(uint8_t *out, const fp_address *a, const uint8_t *tid) {
    uint8_t mask[16];
    put32(mask, MAGIC_COOKIE);
    memcpy(mask + 4, tid, 12);
    size_t ip_length = a->family == 4 ? 4 : 16;
    put16(out, ATTR_XOR_MAPPED_ADDRESS);
    put16(out + 2, (uint32_t)(4 + ip_length));
    out[4] = 0;
    out[5] = a->family == 4 ? 1 : 2;
    put16(out + 6, a->port ^ (MAGIC_COOKIE >> 16));
    for (size_t i = 0; i < ip_length; i++) out[8 + i] = a->ip[i] ^ mask[i];
    return 8 + ip_length;
}

/* Header (type, body length, cookie, tid) at out; the body is already at out + 20; then FINGERPRINT. */
static size_t finish(const fp_ctx *c, uint8_t *out, uint32_t type, size_t body, const uint8_t *tid) {
    put16(out, type);
    put16(out + 2, (uint32_t)(body + 8));
    put32(out + 4, MAGIC_COOKIE);
    memcpy(out + 8, tid, 12);
    uint8_t *fingerprint = out + 20 + body;
    put16(fingerprint, ATTR_FINGERPRINT);
    put16(fingerprint + 2, 4);
    put32(fingerprint + 4, crc32_of(c, out, 20 + body) ^ FINGERPRINT_XOR);
    return 20 + body + 8;
}

static int fingerprint_ok(const fp_ctx *c, const uint8_t *data, size_t at) {
    return get16(data + at) == ATTR_FINGERPRINT && get16(data + at + 2) == 4 &&
           get32(data + at + 4) == (crc32_of(c, data, at) ^ FINGERPRINT_XOR);
}

/* ------------------------------------------------------------------ sessions */

static size_t slot_of(const fp_ctx *c, uint32_t peer_id) {
    /* Ids are small and dense (1, 2, 3 ...): consecutive ids land in consecutive slots, without
     * collisions; the odd multiplier only scatters ids that share their low bits. */
    return (size_t)(peer_id * 2654435761u) & (c->capacity - 1);
}

static fp_entry *find(const fp_ctx *c, uint32_t peer_id) {
    if (peer_id == 0) return NULL;
    size_t i = slot_of(c, peer_id);
    while (c->table[i].peer_id != 0) {
        if (c->table[i].peer_id == peer_id) return &c->table[i];
        i = (i + 1) & (c->capacity - 1);
    }
    return NULL;
}

static int grow(fp_ctx *c) {
    size_t old_capacity = c->capacity;
    fp_entry *old = c->table;
    if (old_capacity > ((size_t)1 << 30)) return -1;
    fp_entry *table = calloc(old_capacity * 2, sizeof(fp_entry));
    if (table == NULL) return -1;
    c->table = table;
    c->capacity = old_capacity * 2;
    for (size_t i = 0; i < old_capacity; i++) {
        if (old[i].peer_id == 0) continue;
        size_t j = slot_of(c, old[i].peer_id);
        while (c->table[j].peer_id != 0) j = (j + 1) & (c->capacity - 1);
        c->table[j] = old[i];
    }
    free(old);
    return 0;
}

/* Python checked `token` for (peer_id, the address in sockaddr `name`): REFRESH may be answered here. */
int fp_add_session(fp_ctx *c, uint32_t peer_id, const uint8_t *token, const uint8_t *name, uint32_t name_length) {
    fp_address address = read_address(name, name_length);
    if (peer_id == 0 || address.family == 0 || get32(token) != peer_id) return -1;
    fp_entry *entry = find(c, peer_id);
    if (entry == NULL) {
        if ((c->count + 1) * 4 > c->capacity * 3 && grow(c) != 0) return -1;
        size_t i = slot_of(c, peer_id);
        while (c->table[i].peer_id != 0) i = (i + 1) & (c->capacity - 1);
        entry = &c->table[i];
        entry->peer_id = peer_id;
        c->count++;
    }
    entry->address = address;
    memcpy(entry->token, token, TOKEN_LENGTH);
    return 0;
}

/* The peer's record changed or went: its REFRESHes take the Python path again. */
int fp_remove_session(fp_ctx *c, uint32_t peer_id) {
    fp_entry *entry = find(c, peer_id);
    if (entry == NULL) return 0;
    size_t mask = c->capacity - 1;
    size_t hole = (size_t)(entry - c->table);
    size_t i = hole;
    /* Backward-shift deletion: move up every later entry of the run that may fill the hole. */
    for (;;) {
        i = (i + 1) & mask;
        if (c->table[i].peer_id == 0) break;
        size_t home = slot_of(c, c->table[i].peer_id);
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            c->table[hole] = c->table[i];
            hole = i;
        }
    }
    memset(&c->table[hole], 0, sizeof(fp_entry));
    c->count--;
    return 1;
}

size_t fp_session_count(const fp_ctx *c) { return c->count; }

void fp_clear_sessions(fp_ctx *c) {
    memset(c->table, 0, c->capacity * sizeof(fp_entry));
    c->count = 0;
}

/* ------------------------------------------------------------------ answers */

static uint32_t clamp_ttl(const fp_ctx *c, int present, uint32_t requested) {
    if (!present) return c->default_ttl;
    if (requested > c->max_ttl) requested = c->max_ttl;
    return requested < c->min_ttl ? c->min_ttl : requested;
}

/* The reply to `data` (`length` bytes from sockaddr `name`) written to `out` (`room` bytes), and
 * its length; 0 if this is not ours to answer.  For a REFRESH, *peer_id and *ttl say who was
 * refreshed and for how long.  Pure: reads the session table, changes nothing. */
size_t fp_answer(const fp_ctx *c, const uint8_t *data, size_t length, const uint8_t *name, uint32_t name_length,
                 uint8_t *out, size_t room, uint32_t *peer_id, uint32_t *ttl) {
    if (length < 20 || length > 60 || room < SLOT || get32(data + 4) != MAGIC_COOKIE) return 0;
    uint16_t type = get16(data);
    size_t body_length = get16(data + 2);
    if (body_length != length - 20) return 0;
    const uint8_t *tid = data + 8;
    if (type == TYPE_BINDING_REQUEST && c->answer_binding) {
        if (!(length == 20 || (length == 28 && fingerprint_ok(c, data, 20)))) return 0;
        fp_address address = read_address(name, name_length);
        if (address.family == 0) return 0;
        size_t body = put_xor_mapped(out + 20, &address, tid);
        /* As core.py: SOFTWARE always for IPv4 (its body is cached with it), and for IPv6 only when
         * the request is 28 bytes (within 3x of what a 20-byte request sent). */
        if (address.family == 4 || length == 28) {
            memcpy(out + 20 + body, c->software, c->software_length);
            body += c->software_length;
        }
        return finish(c, out, TYPE_BINDING_SUCCESS, body, tid);
    }
    if (type != TYPE_REFRESH_REQUEST || !c->answer_refresh || length < 44) return 0;
    if (get16(data + 20) != ATTR_SESSION || get16(data + 22) != TOKEN_LENGTH) return 0;
    size_t offset = 44;
    int has_ttl = 0;
    uint32_t requested = 0;
    if (length >= offset + 8 && get16(data + offset) == ATTR_TTL && get16(data + offset + 2) == 4) {
        has_ttl = 1;
        requested = get32(data + offset + 4);
        offset += 8;
    }
    if (length == offset + 8) {
        if (!fingerprint_ok(c, data, offset)) return 0;
    } else if (length != offset) {
        return 0;
    }
    const uint8_t *token = data + 24;
    const fp_entry *entry = find(c, get32(token));
    if (entry == NULL || memcmp(entry->token, token, TOKEN_LENGTH) != 0) return 0;
    fp_address address = read_address(name, name_length);
    if (!same_address(&entry->address, &address)) return 0;
    uint32_t granted = clamp_ttl(c, has_ttl, requested);
    uint8_t *p = out + 20;
    put16(p, ATTR_TTL);
    put16(p + 2, 4);
    put32(p + 4, granted);
    size_t body = 8 + put_xor_mapped(p + 8, &address, tid);
    memcpy(out + 20 + body, c->software, c->software_length);
    body += c->software_length;
    *peer_id = entry->peer_id;
    *ttl = granted;
    return finish(c, out, TYPE_REFRESH_SUCCESS, body, tid);
}

/* ------------------------------------------------------------------ one wake-up */

/* recvmmsg into the `in` headers, answer what is ours into the `out` headers, send those with
 * sendmmsg.  Returns how many datagrams were read (0: none waiting) or -errno.  Afterwards
 * counts[] holds the FP_COUNT_* numbers, others[] the indices (into `in`) left for Python and
 * refreshed[] the (peer id, TTL) pairs of the REFRESHes answered. */
int fp_serve(fp_ctx *c, int fd) {
    memset(c->counts, 0, FP_COUNTS * sizeof(uint32_t));
    if (c->in == NULL) return -EINVAL;
    for (unsigned i = 0; i < c->batch; i++) c->in[i].msg_hdr.msg_namelen = NAME_SIZE;
    int received = recvmmsg(fd, c->in, c->batch, MSG_DONTWAIT, NULL);
    if (received < 0) return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -errno;
    unsigned replies = 0, others = 0, refreshes = 0, bindings = 0;
    for (int i = 0; i < received; i++) {
        struct msghdr *in = &c->in[i].msg_hdr;
        size_t length = c->in[i].msg_len;
        if (length > SLOT) length = SLOT; /* truncated: longer than any of ours, left to Python */
        uint32_t name_length = in->msg_namelen > NAME_SIZE ? NAME_SIZE : in->msg_namelen;
        struct msghdr *out = &c->out[replies].msg_hdr;
        uint32_t peer_id = 0, ttl = 0;
        size_t reply = 0;
        if (length <= in->msg_iov[0].iov_len && out->msg_iov[0].iov_len >= SLOT) {
            reply = fp_answer(c, in->msg_iov[0].iov_base, length, in->msg_name, name_length, out->msg_iov[0].iov_base,
                              SLOT, &peer_id, &ttl);
        }
        if (reply == 0) {
            c->others[others++] = (uint16_t)i;
            continue;
        }
        /* The reply goes back to the sockaddr it came from, as received. */
        memcpy(out->msg_name, in->msg_name, name_length);
        out->msg_namelen = name_length;
        c->out[replies].msg_len = (unsigned)reply; /* remembered until the send below */
        replies++;
        if (peer_id != 0) {
            c->refreshed[2 * refreshes] = peer_id;
            c->refreshed[2 * refreshes + 1] = ttl;
            refreshes++;
        } else {
            bindings++;
        }
    }
    /* iov_len of each reply slot: set now (msg_len is overwritten by sendmmsg). */
    for (unsigned j = 0; j < replies; j++) c->out[j].msg_hdr.msg_iov[0].iov_len = c->out[j].msg_len;
    unsigned sent = 0;
    while (sent < replies) {
        int n = sendmmsg(fd, c->out + sent, replies - sent, MSG_DONTWAIT);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            /* Buffer full or a per-destination error: drop that one, keep the rest (as mmsg.py). */
            c->counts[FP_COUNT_SEND_ERRORS]++;
            sent++;
            continue;
        }
        sent += (unsigned)n;
    }
    for (unsigned j = 0; j < replies; j++) c->out[j].msg_hdr.msg_iov[0].iov_len = SLOT;
    c->counts[FP_COUNT_OTHERS] = others;
    c->counts[FP_COUNT_BINDINGS] = bindings;
    c->counts[FP_COUNT_REFRESHES] = refreshes;
    return received;
}

/* ------------------------------------------------------------------ life cycle */

int fp_abi_version(void) { return FP_ABI_VERSION; }

fp_ctx *fp_new(const uint8_t *software, size_t software_length, uint32_t min_ttl, uint32_t max_ttl,
               uint32_t default_ttl, int answer_binding, int answer_refresh) {
    if (software_length > MAX_SOFTWARE || software_length % 4 != 0 || min_ttl > max_ttl) return NULL;
    fp_ctx *c = calloc(1, sizeof(fp_ctx));
    if (c == NULL) return NULL;
    c->capacity = 1024;
    c->table = calloc(c->capacity, sizeof(fp_entry));
    if (c->table == NULL) {
        free(c);
        return NULL;
    }
    memcpy(c->software, software, software_length);
    c->software_length = software_length;
    c->min_ttl = min_ttl;
    c->max_ttl = max_ttl;
    c->default_ttl = default_ttl;
    c->answer_binding = answer_binding;
    c->answer_refresh = answer_refresh;
    crc_init(c);
    return c;
}

/* The caller's buffers (they outlive every fp_serve): `batch` mmsghdr each way, each with one
 * iovec of SLOT bytes and a name of NAME_SIZE bytes; others[batch], refreshed[2 * batch],
 * counts[FP_COUNTS]. */
int fp_set_buffers(fp_ctx *c, struct mmsghdr *in, struct mmsghdr *out, unsigned batch, uint16_t *others,
                   uint32_t *refreshed, uint32_t *counts) {
    if (batch == 0 || batch > 1024) return -1;
    for (unsigned i = 0; i < batch; i++) {
        if (in[i].msg_hdr.msg_iovlen != 1 || out[i].msg_hdr.msg_iovlen != 1) return -1;
        if (in[i].msg_hdr.msg_iov[0].iov_len > SLOT || out[i].msg_hdr.msg_iov[0].iov_len < SLOT) return -1;
    }
    c->in = in;
    c->out = out;
    c->batch = batch;
    c->others = others;
    c->refreshed = refreshed;
    c->counts = counts;
    return 0;
}

void fp_free(fp_ctx *c) {
    if (c == NULL) return;
    free(c->table);
    free(c);
}
