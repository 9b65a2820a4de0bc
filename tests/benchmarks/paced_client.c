/* Open-loop HTTP load for tests/benchmarks/http_bench.py: request i starts at start + i/rate on
 * a new connection (gunicorn's sync workers close each one) whatever earlier requests are doing,
 * and its latency runs from when it was due, not from when it was sent, so queueing shows.
 *
 * In C because the client shares the machine's two cores with the server: the same loop in
 * Python took 0.1 ms of CPU per request (29% of a core at 3,000 requests/s), which the server
 * then lacked at the very rate meant to leave it 20% to spare.
 *
 * usage: paced_client PORT RATE SECONDS REQUEST_FILE...  (the files' bytes are sent in turn)
 * stdout: one line per request, "status latency_us lag_us impression_id|-", where status is the
 * HTTP status or a word for a request that got none; then "end WALL_SECONDS CPU_SECONDS".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 65536
#define BUFFER 8192

struct pending {
    int open;
    double due;
    const char *request;
    size_t request_len, sent, received;
    char answer[BUFFER];
};

static struct pending *by_fd;
static int poller;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)size);
    if (fread(data, 1, (size_t)size, f) != (size_t)size) { perror(path); exit(2); }
    fclose(f);
    *len = (size_t)size;
    return data;
}

static void finish(int fd, const char *status, double lag) {
    struct pending *p = &by_fd[fd];
    char id[64] = "-";
    if (strcmp(status, "200") == 0) {
        const char *key = strstr(p->answer, "\"impression_id\"");
        if (key) {
            const char *quote = strchr(key + 15, '"');
            const char *end = quote ? strchr(quote + 1, '"') : NULL;
            if (end && end - quote - 1 < (long)sizeof id) {
                memcpy(id, quote + 1, (size_t)(end - quote - 1));
                id[end - quote - 1] = 0;
            }
        }
    }
    printf("%s %.0f %.0f %s\n", status, (now() - p->due) * 1e6, lag * 1e6, id);
    p->open = 0;
    close(fd); /* also leaves the epoll set */
}

/* The answer is complete once the head and Content-Length bytes of body are in. */
static int complete(struct pending *p, char *status, size_t status_len) {
    p->answer[p->received] = 0;
    char *end = strstr(p->answer, "\r\n\r\n");
    if (!end) return 0;
    const char *length = strcasestr(p->answer, "\r\ncontent-length:");
    if (!length || length > end) return 0;
    long body = strtol(length + 17, NULL, 10);
    if ((long)(p->received - (size_t)(end + 4 - p->answer)) < body) return 0;
    if (sscanf(p->answer, "HTTP/1.%*c %3s", status) != 1) snprintf(status, status_len, "bad_answer");
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s PORT RATE SECONDS REQUEST_FILE...\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    double rate = atof(argv[2]), seconds = atof(argv[3]);
    int kinds = argc - 4;
    char **requests = calloc((size_t)kinds, sizeof *requests);
    size_t *lengths = calloc((size_t)kinds, sizeof *lengths);
    for (int i = 0; i < kinds; i++) requests[i] = slurp(argv[4 + i], &lengths[i]);
    by_fd = calloc(MAX_FDS, sizeof *by_fd);
    double *lags = calloc(MAX_FDS, sizeof *lags);
    poller = epoll_create1(0);

    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &server.sin_addr);

    long total = (long)(rate * seconds), sent = 0, open = 0;
    double start = now() + 0.05, deadline = start + seconds + 30;
    struct epoll_event events[256];
    while (sent < total || open > 0) {
        double t = now();
        while (sent < total && start + (double)sent / rate <= t) {
            double due = start + (double)sent / rate;
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (fd < 0 || fd >= MAX_FDS) {
                printf("socket_error 0 %.0f -\n", (t - due) * 1e6);
                if (fd >= 0) close(fd);
                sent++;
                continue;
            }
            struct pending *p = &by_fd[fd];
            p->open = 1;
            p->due = due;
            p->request = requests[sent % kinds];
            p->request_len = lengths[sent % kinds];
            p->sent = p->received = 0;
            lags[fd] = t - due;
            open++;
            sent++;
            if (connect(fd, (struct sockaddr *)&server, sizeof server) < 0 && errno != EINPROGRESS) {
                finish(fd, "connect_error", lags[fd]);
                open--;
                continue;
            }
            struct epoll_event want = {.events = EPOLLOUT, .data.fd = fd};
            epoll_ctl(poller, EPOLL_CTL_ADD, fd, &want);
        }
        if (t > deadline) {
            for (int fd = 0; fd < MAX_FDS; fd++)
                if (by_fd[fd].open) { finish(fd, "timeout", lags[fd]); open--; }
            break;
        }
        double wait = sent < total ? start + (double)sent / rate - t : 0.1;
        int ready = epoll_wait(poller, events, 256, wait > 0 ? (int)ceil(wait * 1000) : 0);
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            struct pending *p = &by_fd[fd];
            if (!p->open) continue;
            if (p->sent < p->request_len) {
                if (events[i].events & (EPOLLERR | EPOLLHUP)) {
                    finish(fd, "connect_error", lags[fd]);
                    open--;
                    continue;
                }
                ssize_t n = send(fd, p->request + p->sent, p->request_len - p->sent, MSG_NOSIGNAL);
                if (n < 0) {
                    if (errno == EAGAIN) continue;
                    finish(fd, "send_error", lags[fd]);
                    open--;
                    continue;
                }
                p->sent += (size_t)n;
                if (p->sent == p->request_len) {
                    struct epoll_event want = {.events = EPOLLIN, .data.fd = fd};
                    epoll_ctl(poller, EPOLL_CTL_MOD, fd, &want);
                }
                continue;
            }
            ssize_t n = recv(fd, p->answer + p->received, BUFFER - 1 - p->received, 0);
            if (n < 0 && errno == EAGAIN) continue;
            char status[32];
            if (n > 0) {
                p->received += (size_t)n;
                if (complete(p, status, sizeof status)) { finish(fd, status, lags[fd]); open--; }
                else if (p->received >= BUFFER - 1) { finish(fd, "too_long", lags[fd]); open--; }
                continue;
            }
            finish(fd, n == 0 ? "closed_early" : "recv_error", lags[fd]);
            open--;
        }
    }
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double cpu = (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 +
                 (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
    printf("end %.6f %.6f\n", now() - start, cpu);
    return 0;
}
