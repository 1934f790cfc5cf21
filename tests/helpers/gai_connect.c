/* `gai_connect NAME PORT`: getaddrinfo(NAME, AF_UNSPEC, SOCK_STREAM), then a TCP connect to every
 * address in order. One line per address: `ok ADDR` or `errno N ADDR`. Exit 2 when getaddrinfo
 * fails (`gai N`), 0 otherwise. Built static with musl-gcc by the tests (musl's own resolver). */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s NAME PORT\n", argv[0]);
        return 64;
    }
    struct addrinfo hints, *res, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(argv[1], argv[2], &hints, &res);
    if (rc != 0) {
        printf("gai %d\n", rc);
        return 2;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        char host[INET6_ADDRSTRLEN];
        void *a = ai->ai_family == AF_INET ? (void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                                           : (void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
        inet_ntop(ai->ai_family, a, host, sizeof host);
        int s = socket(ai->ai_family, SOCK_STREAM, 0);
        if (s < 0) {
            printf("errno %d %s\n", errno, host);
            continue;
        }
        if (connect(s, ai->ai_addr, ai->ai_addrlen) == 0)
            printf("ok %s\n", host);
        else
            printf("errno %d %s\n", errno, host);
        close(s);
    }
    freeaddrinfo(res);
    return 0;
}
