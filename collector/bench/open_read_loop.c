/*
 * The workload of DESIGN.md §7: open, read 8 KiB from, and close one of 64
 * files in DIR, ITERATIONS times; prints the elapsed seconds.
 *
 *   open_read_loop DIR ITERATIONS
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s DIR ITERATIONS\n", argv[0]);
		return 2;
	}
	long iterations = atol(argv[2]);
	char path[4096];
	static char buf[8192];
	struct timespec start, end;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (long i = 0; i < iterations; i++) {
		snprintf(path, sizeof(path), "%s/file-%ld", argv[1], i % 64);
		int fd = open(path, O_RDONLY);
		if (fd < 0) {
			perror(path);
			return 1;
		}
		if (read(fd, buf, sizeof(buf)) < 0) {
			perror("read");
			return 1;
		}
		close(fd);
	}
	clock_gettime(CLOCK_MONOTONIC, &end);
	printf("%.3f\n", (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9);
	return 0;
}
