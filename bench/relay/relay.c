/* The floor of any relay hop for a client that connects once per command (the swtpm TCTI):
 * accept, read one TPM command, write it to the TPM over one kept unix connection, read the
 * answer, write it back, close. Nothing else: no checks, no logging, one client at a time.
 * bench/passthrough.py builds and runs it (`cc -O2`) to show what no process in the middle
 * can beat. Usage: relay LISTEN_PATH UPSTREAM_PATH */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int unix_addr(struct sockaddr_un *a, const char *path)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path)
        return -1;
    strcpy(a->sun_path, path);
    return 0;
}

/* One TPM message (10-byte header, big-endian size at offset 2) into buf; its length or -1. */
static ssize_t read_message(int fd, unsigned char *buf, size_t cap)
{
    size_t have = 0, want = 10;
    while (have < want) {
        ssize_t n = read(fd, buf + have, cap - have);
        if (n <= 0)
            return -1;
        have += (size_t)n;
        if (have >= 10) {
            want = (size_t)buf[2] << 24 | (size_t)buf[3] << 16 | (size_t)buf[4] << 8 | buf[5];
            if (want < 10 || want > cap)
                return -1;
        }
    }
    return (ssize_t)want;
}

static int write_all(int fd, const unsigned char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_un la, ua;
    static unsigned char buf[8192];
    if (argc != 3 || unix_addr(&la, argv[1]) || unix_addr(&ua, argv[2])) {
        fprintf(stderr, "usage: relay LISTEN_PATH UPSTREAM_PATH\n");
        return 2;
    }
    int up = socket(AF_UNIX, SOCK_STREAM, 0);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(up, (struct sockaddr *)&ua, sizeof ua) || bind(l, (struct sockaddr *)&la, sizeof la)
        || listen(l, 64)) {
        perror("relay");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0)
            continue;
        ssize_t n = read_message(c, buf, sizeof buf);
        if (n > 0 && write_all(up, buf, (size_t)n) == 0) {
            n = read_message(up, buf, sizeof buf);
            if (n < 0)
                return 1;
            write_all(c, buf, (size_t)n);
        }
        close(c);
    }
}
