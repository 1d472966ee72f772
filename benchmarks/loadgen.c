/*
 * sockchat load generator: C conversations of T turns each, over loopback.
 *
 * One thread, one epoll set, non-blocking sockets, so that the generator
 * costs a few microseconds per turn and is not the bottleneck.  It measures
 * its own CPU (getrusage) over the turn phase.
 *
 *   loadgen --port P --conns C --turns T [--host 127.0.0.1] [--size 32]
 *           [--port2 P2]
 *           [--warmup 1]
 *           [--mode echo|pair] [--window 32] [--deadline 120] [--sync]
 *           [--no-greeting] [--ws PATH]
 *
 * --no-greeting: the server says nothing first (a bare echo server, such
 * as the C, asyncio and uvloop ones in ../shared/bench/servers): a
 * connection is ready once it is connected.
 *
 * --ws PATH: speak WebSocket (RFC 6455) to ws://HOST:PORT/PATH instead of
 * lines: each connection sends the upgrade request (with an Origin of the
 * same host, as a browser would), then every line it would send is one
 * masked text frame without its newline, and every text frame received is
 * one line.  Frames are small (at most 125 bytes of payload) and whole.
 *
 * With --port2, every other connection (the 2nd, 4th, ...) goes to port P2:
 * two servers (two sockchat instances sharing a broker) share the load.
 *
 * Phases:
 *   1. connect: at most --window connections are connecting or waiting for
 *      their first line at a time (so a listen backlog of 50 never
 *      overflows).  Each must receive one greeting line first: "!info ..."
 *      (any first line that is not a notice is an error).
 *   1b. warm-up: --warmup untimed turns per conversation (default 1), so
 *      that what a server does once per conversation at its first line is
 *      not counted as a turn's cost; then the turn counters start again.
 *   2. turns: each speaker sends a --size byte line (newline included) and
 *      checks that the answer is exactly that line, T times.  In pair mode,
 *      the server pairs clients; a client told "!info listen: ..." is a
 *      listener: it receives its partner's line and sends it back unchanged,
 *      so the speaker still gets its own line back and checks it.  (Paired
 *      through a broker, both are told they may speak, and their lines
 *      cross: each checks it gets its partner's; see partner_port.)  Other
 *      "!info" notices are status, not answers, and are skipped; any other
 *      notice ("!error", "!bye") is an error.
 *   3. hold: the connections stay open until the end (with --sync, until a
 *      line or EOF arrives on stdin), then all are closed.
 *
 * With --sync, it prints "ready ..." after phase 1 and waits for a line on
 * stdin before phase 2, and prints "done {json}" after phase 2 and waits
 * for a line on stdin (or EOF) before it closes everything: the runner
 * samples the server's CPU and memory at those points.  Without --sync, it
 * runs straight through and prints the JSON line.
 *
 * Bounded: at most C connections and C*T turns, and --deadline seconds in
 * all (counted from the start, excluding time spent waiting on stdin).
 * Exit status: 0 if every answer was right, 1 on any error, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define INBUF 2048
#define MAX_SIZE 1024

enum state { UNUSED, CONNECTING, UPGRADING, GREETING, READY, WAITING, FINISHED, BROKEN };

struct conn {
    int fd;
    int index;
    enum state state;
    int listener;  /* pair mode: told to listen; relays its partner's lines */
    int port;      /* its local port, which the server names it by */
    int partner;   /* crossing pairs (see partner_port): the partner's index */
    int crossing;  /* both speak each turn; each answer is the partner's line */
    int turns;     /* answers received (speaker) or lines relayed (listener) */
    int64_t sent_at;
    int inlen;
    char in[INBUF];
    char out[MAX_SIZE];
};

static struct {
    const char *host;
    int port, port2, conns, turns, size, window, sync, pair, warmup, greeting;
    double deadline;
    const char *ws; /* WebSocket path, or NULL: lines */
} opt = {"127.0.0.1", 0, 0, 1, 1, 32, 32, 0, 0, 1, 1, 120.0, NULL};

static struct conn *conns;
static int epfd;
static int64_t *latency;
static long nlatency;
static long errors;
static int finished, greeted, listeners, opened, crossing, crossers;
static int64_t started_ns;
static double waited; /* seconds spent waiting on stdin, not on the deadline */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void error(struct conn *c, const char *fmt, ...) {
    errors++;
    if (errors <= 10) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "loadgen: connection %d: ", c ? c->index : -1);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    if (c && c->state != BROKEN) {
        if (c->state == FINISHED) finished--;
        c->state = BROKEN;
        finished++; /* a broken connection is over too */
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    }
}

static int over_deadline(void) {
    return (now_ns() - started_ns) / 1e9 - waited > opt.deadline;
}

/* The line speaker c sends at turn t: "c000042 t000007 xxxx...\n". */
static void make_line(struct conn *c, int t) {
    int n = snprintf(c->out, MAX_SIZE, "c%06d t%06d ", c->index, t);
    if (n > opt.size - 1) n = opt.size - 1;
    memset(c->out + n, 'x', opt.size - 1 - n);
    c->out[opt.size - 1] = '\n';
}

static void send_out(struct conn *c) {
    if (opt.ws) { /* one masked text frame: the line without its newline */
        char frame[MAX_SIZE + 8];
        int len = opt.size - 1;
        frame[0] = (char)0x81;              /* FIN, text */
        frame[1] = (char)(0x80 | len);      /* masked, len <= 125 */
        memset(frame + 2, 0, 4);            /* a zero mask: the payload as is */
        memcpy(frame + 6, c->out, len);
        ssize_t n = send(c->fd, frame, len + 6, MSG_NOSIGNAL);
        if (n != len + 6)
            error(c, "send returned %zd (%s)", n, n < 0 ? strerror(errno) : "short");
        return;
    }
    ssize_t n = send(c->fd, c->out, opt.size, MSG_NOSIGNAL);
    if (n != opt.size) {
        error(c, "send returned %zd (%s)", n, n < 0 ? strerror(errno) : "short");
        return;
    }
}

static void speak(struct conn *c) {
    make_line(c, c->turns);
    c->state = WAITING;
    c->sent_at = now_ns();
    send_out(c);
}

static int open_one(int index) {
    struct conn *c = &conns[index];
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(opt.port2 && index % 2 ? opt.port2 : opt.port);
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address\n");
        exit(2);
    }
    c->index = index;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        error(NULL, "socket: %s (raise ulimit -n?)", strerror(errno));
        c->state = BROKEN;
        finished++;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 &&
        errno != EINPROGRESS) {
        error(c, "connect: %s", strerror(errno));
        return -1;
    }
    struct sockaddr_in local;
    socklen_t size = sizeof local;
    if (getsockname(c->fd, (struct sockaddr *)&local, &size) == 0)
        c->port = ntohs(local.sin_port);
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = index};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

/* The connect finished: upgrade, wait for a greeting, or be ready. */
static void on_connected(struct conn *c) {
    int err = 0;
    socklen_t size = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &size);
    if (err) {
        error(c, "connect: %s", strerror(err));
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = c->index};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    if (opt.ws) {
        char req[512];
        int n = snprintf(req, sizeof req,
                         "GET /%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Origin: http://%s:%d\r\n\r\n",
                         opt.ws, opt.host, opt.port, opt.host, opt.port);
        if (send(c->fd, req, n, MSG_NOSIGNAL) != n) {
            error(c, "could not send the upgrade request");
            return;
        }
        c->state = UPGRADING;
    } else if (opt.greeting) {
        c->state = GREETING;
    } else {
        c->state = READY;
        greeted++;
    }
}

/* Pair mode through a broker: both partners are told they may speak now
 * ("!info paired: you are talking with client i2/7 (127.0.0.1:PORT). You may
 * both speak now: ..."), since neither instance knew of the other when it
 * welcomed its client.  Their lines cross: each turn, both send a line and
 * each gets the other's as its answer, which it checks.  The partner is
 * found by its port, the last ":PORT)" in the notice.  Phase 1 waits until
 * both of every such pair have been told. */
static int partner_port(const char *line, int len) {
    for (int i = len - 1; i > 0; i--) {
        if (line[i] != ')') continue;
        int j = i;
        while (j > 0 && line[j - 1] >= '0' && line[j - 1] <= '9') j--;
        if (j < i && j > 0 && line[j - 1] == ':') return atoi(line + j);
    }
    return 0;
}

static int is_notice(const char *line, int len) {
    return len >= 1 && line[0] == '!' && !(len >= 2 && line[1] == '!');
}

static int starts(const char *line, int len, const char *prefix) {
    int n = strlen(prefix);
    return len >= n && memcmp(line, prefix, n) == 0;
}

/* One complete line (without its newline) arrived on c. */
static void on_line(struct conn *c, const char *line, int len) {
    if (c->state == GREETING) {
        if (!is_notice(line, len) || !starts(line, len, "!info ")) {
            error(c, "first line is not an info notice: %.*s", len, line);
            return;
        }
        if (starts(line, len, "!info listen:")) {
            c->listener = 1;
            listeners++;
        }
        c->state = READY;
        greeted++;
        return;
    }
    if (is_notice(line, len)) {
        if (starts(line, len, "!info listen:") && c->state == READY && !c->listener) {
            c->listener = 1; /* a listen notice after a plain welcome */
            listeners++;
            return;
        }
        if (opt.pair && starts(line, len, "!info paired:") && c->state == READY &&
            !c->listener && memmem(line, len, "may both speak", 14)) {
            int theirs = partner_port(line, len);
            if (!theirs) {
                error(c, "no partner's port in: %.*s", len, line);
                return;
            }
            c->partner = -1;
            for (int i = 0; i < opened; i++)
                if (conns[i].port == theirs && &conns[i] != c) c->partner = i;
            if (c->partner < 0) {
                error(c, "paired with a port it did not open: %.*s", len, line);
                return;
            }
            c->crossing = 1;
            crossing = 1;
            crossers++;
            return;
        }
        if (starts(line, len, "!info "))
            return; /* status, not an answer (pair mode: "waiting", "paired") */
        error(c, "unexpected notice: %.*s", len, line);
        return;
    }
    if (c->listener) {
        /* The partner's line: "c<id> t<turn> ..." for the turn we are at. */
        int id, turn;
        if (len != opt.size - 1 || sscanf(line, "c%d t%d ", &id, &turn) != 2 ||
            turn != c->turns) {
            error(c, "relayed line %d is not the partner's: %.*s", c->turns, len,
                  line);
            return;
        }
        memcpy(c->out, line, len);
        c->out[len] = '\n';
        send_out(c);
        if (++c->turns == opt.turns) {
            c->state = FINISHED;
            finished++;
        }
        return;
    }
    if (c->state != WAITING) {
        error(c, "a line arrived while none was owed: %.*s", len, line);
        return;
    }
    const char *expected = c->out;
    char theirs[MAX_SIZE];
    if (c->crossing) { /* the partner's line for this turn */
        struct conn *p = &conns[c->partner];
        int n = snprintf(theirs, MAX_SIZE, "c%06d t%06d ", p->index, c->turns);
        if (n > opt.size - 1) n = opt.size - 1;
        memset(theirs + n, 'x', opt.size - 1 - n);
        expected = theirs;
    }
    if (len != opt.size - 1 || memcmp(line, expected, len) != 0) {
        error(c, "wrong answer to turn %d: %.*s", c->turns, len, line);
        return;
    }
    latency[nlatency++] = now_ns() - c->sent_at;
    if (++c->turns == opt.turns) {
        c->state = FINISHED;
        finished++;
    } else {
        speak(c);
    }
}

static void on_readable(struct conn *c) {
    ssize_t n = recv(c->fd, c->in + c->inlen, INBUF - c->inlen, 0);
    if (n <= 0) {
        if (n < 0 && errno == EAGAIN) return;
        error(c, "%s", n == 0 ? "the server closed the connection" : strerror(errno));
        return;
    }
    c->inlen += n;
    char *start = c->in, *end = c->in + c->inlen, *nl;
    if (c->state == UPGRADING) {
        char *done = memmem(start, end - start, "\r\n\r\n", 4);
        if (!done) {
            if (c->inlen == INBUF) error(c, "an upgrade response too long");
            return;
        }
        if (!starts(start, end - start, "HTTP/1.1 101")) {
            error(c, "the upgrade was refused: %.*s", (int)(done - start), start);
            return;
        }
        start = done + 4;
        c->state = opt.greeting ? GREETING : READY;
        if (!opt.greeting) greeted++;
    }
    while (opt.ws && c->state != BROKEN && end - start >= 2) {
        int opcode = start[0] & 0x0f, len = start[1] & 0x7f, head = 2;
        if (len == 126) {
            if (end - start < 4) break;
            len = ((unsigned char)start[2] << 8) | (unsigned char)start[3];
            head = 4;
        } else if (len == 127 || (start[1] & 0x80) || !(start[0] & 0x80)) {
            error(c, "a frame this generator does not read (%02x %02x)",
                  (unsigned char)start[0], (unsigned char)start[1]);
            return;
        }
        if (end - start < head + len) break;
        if (opcode == 1) on_line(c, start + head, len);
        else if (opcode == 8) error(c, "the server closed the WebSocket");
        start += head + len;
    }
    while (!opt.ws && c->state != BROKEN && (nl = memchr(start, '\n', end - start))) {
        on_line(c, start, nl - start);
        start = nl + 1;
    }
    if (c->state == BROKEN) return;
    c->inlen = end - start;
    if (c->inlen == INBUF) {
        error(c, "a line longer than %d bytes", INBUF);
        return;
    }
    memmove(c->in, start, c->inlen);
}

static int poll_once(int timeout_ms) {
    struct epoll_event events[256];
    int n = epoll_wait(epfd, events, 256, timeout_ms);
    for (int i = 0; i < n; i++) {
        struct conn *c = &conns[events[i].data.u32];
        if (c->state == CONNECTING) on_connected(c);
        else if (c->state != BROKEN) on_readable(c);
    }
    return n;
}

/* With --sync: wait for a line (or EOF) on stdin. */
static void wait_stdin(void) {
    int64_t t0 = now_ns();
    char buf[64];
    if (!fgets(buf, sizeof buf, stdin)) { /* EOF also means go on */
    }
    waited += (now_ns() - t0) / 1e9;
}

/* Every speaker speaks, then each conversation takes opt.turns turns. */
static void run_turns(void) {
    finished = 0;
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        if (c->state == BROKEN) finished++;
        else if (!c->listener) speak(c);
    }
    while (!errors && finished < opt.conns && !over_deadline()) poll_once(100);
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double percentile_us(double p) {
    if (nlatency == 0) return 0;
    long i = (long)(p * (nlatency - 1) + 0.5);
    return latency[i] / 1e3;
}

static int parse_int(const char *name, const char *text, int min) {
    char *end;
    long v = strtol(text, &end, 10);
    if (*end || v < min || v > 10000000) {
        fprintf(stderr, "loadgen: %s %s is not a whole number >= %d\n", name, text,
                min);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--sync")) { opt.sync = 1; continue; }
        if (!strcmp(a, "--no-greeting")) { opt.greeting = 0; continue; }
        if (!v) { fprintf(stderr, "loadgen: %s needs a value\n", a); return 2; }
        i++;
        if (!strcmp(a, "--host")) opt.host = v;
        else if (!strcmp(a, "--port")) opt.port = parse_int(a, v, 1);
        else if (!strcmp(a, "--ws")) opt.ws = v;
        else if (!strcmp(a, "--port2")) opt.port2 = parse_int(a, v, 1);
        else if (!strcmp(a, "--conns")) opt.conns = parse_int(a, v, 1);
        else if (!strcmp(a, "--turns")) opt.turns = parse_int(a, v, 1);
        else if (!strcmp(a, "--size")) opt.size = parse_int(a, v, 17);
        else if (!strcmp(a, "--window")) opt.window = parse_int(a, v, 1);
        else if (!strcmp(a, "--warmup")) opt.warmup = parse_int(a, v, 0);
        else if (!strcmp(a, "--deadline")) opt.deadline = parse_int(a, v, 1);
        else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "pair")) opt.pair = 1;
            else if (strcmp(v, "echo")) {
                fprintf(stderr, "loadgen: --mode is echo or pair\n");
                return 2;
            }
        } else { fprintf(stderr, "loadgen: unknown option %s\n", a); return 2; }
    }
    if (opt.ws && opt.size > 126) {
        fprintf(stderr, "loadgen: with --ws, --size is at most 126\n");
        return 2;
    }
    if (!opt.port || opt.size > MAX_SIZE || (opt.pair && opt.conns % 2)) {
        fprintf(stderr, "loadgen: needs --port; --size at most %d; pair mode needs "
                        "an even --conns\n", MAX_SIZE);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    conns = calloc(opt.conns, sizeof *conns);
    latency = calloc((size_t)opt.conns * opt.turns, sizeof *latency);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || !latency || epfd < 0) { perror("loadgen"); return 1; }
    started_ns = now_ns();

    /* Phase 1: connect, a window at a time; each must be greeted. */
    int want_listeners = opt.pair ? opt.conns / 2 : 0;
    while ((greeted + errors < opt.conns ||
            listeners + crossers / 2 < want_listeners) &&
           !over_deadline()) {
        while (opened < opt.conns && opened - greeted - errors < opt.window)
            open_one(opened++);
        if (errors) break;
        poll_once(100);
    }
    double connect_s = (now_ns() - started_ns) / 1e9;
    if (!errors && listeners + crossers / 2 != want_listeners)
        error(NULL, "%d of %d clients were told to listen (and %d to cross their "
              "lines); expected %d pairs", listeners, opt.conns, crossers,
              want_listeners);
    if (!errors && greeted < opt.conns)
        error(NULL, "only %d of %d connections greeted before the deadline", greeted,
              opt.conns);

    /* Phase 1b: --warmup untimed turns each (default 1), as the independent
     * generator (shared/bench/turns.py) does: what a server does once per
     * conversation at its first line, such as sockchat's "started" log line,
     * is not counted as the cost of a turn. */
    if (!errors && opt.warmup) {
        int timed = opt.turns;
        opt.turns = opt.warmup;
        run_turns();
        if (!errors && finished < opt.conns)
            error(NULL, "%d of %d warm-up turns unfinished at the deadline",
                  opt.conns - finished, opt.conns);
        opt.turns = timed;
        for (int i = 0; i < opt.conns; i++) {
            struct conn *c = &conns[i];
            if (c->state != BROKEN) { c->state = READY; c->turns = 0; }
        }
        nlatency = 0;
    }
    if (opt.sync) {
        printf("ready %.6f\n", connect_s);
        wait_stdin();
    }

    /* Phase 2: the turns. */
    double cpu0 = cpu_seconds();
    int64_t t0 = now_ns();
    run_turns();
    int64_t t1 = now_ns();
    double cpu1 = cpu_seconds();
    if (!errors && finished < opt.conns)
        error(NULL, "%d of %d conversations unfinished at the deadline",
              opt.conns - finished, opt.conns);

    qsort(latency, nlatency, sizeof *latency, cmp64);
    double wall = (t1 - t0) / 1e9;
    /* Pair mode: each answer a speaker checks took two relays, except when
     * lines cross, where each answer is one relayed line. */
    long relayed = opt.pair && !crossing ? 2 * nlatency : nlatency;
    printf("%s{\"conns\": %d, \"turns\": %ld, \"messages\": %ld, \"errors\": %ld, "
           "\"connect_s\": %.6f, \"wall_s\": %.6f, \"turns_per_s\": %.1f, "
           "\"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f, "
           "\"client_cpu_s\": %.6f}\n",
           opt.sync ? "done " : "", opt.conns, nlatency, relayed, errors, connect_s,
           wall, wall > 0 ? nlatency / wall : 0.0, percentile_us(0.50),
           percentile_us(0.99), nlatency ? latency[nlatency - 1] / 1e3 : 0.0,
           cpu1 - cpu0);

    /* Phase 3: hold until told, then close everything. */
    if (opt.sync) wait_stdin();
    for (int i = 0; i < opened; i++)
        if (conns[i].fd > 0) close(conns[i].fd);
    return errors ? 1 : 0;
}
