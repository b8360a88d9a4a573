/*
 * What one system call costs, in nanoseconds, for two calls a server makes
 * all the time: getppid (no tracepoint program of the collector's on it)
 * and a 1-byte read from /dev/zero (the collector traces read's exit).
 * Runs each ITERATIONS times and prints "GETPPID_NS READ_NS".
 *
 *   syscall_loop ITERATIONS
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double nanoseconds_since(const struct timespec *start)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - start->tv_sec) * 1e9 + (now.tv_nsec - start->tv_nsec);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s ITERATIONS\n", argv[0]);
		return 2;
	}
	long iterations = atol(argv[1]);
	if (iterations <= 0) {
		fprintf(stderr, "ITERATIONS must be a positive number, not '%s'\n", argv[1]);
		return 2;
	}
	int zero = open("/dev/zero", O_RDONLY);
	if (zero < 0) {
		perror("/dev/zero");
		return 1;
	}
	char byte;
	struct timespec start;

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (long i = 0; i < iterations; i++)
		syscall(SYS_getppid); /* not the libc wrapper, which may cache */
	double getppid_ns = nanoseconds_since(&start) / iterations;

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (long i = 0; i < iterations; i++) {
		if (read(zero, &byte, 1) != 1) {
			perror("read /dev/zero");
			return 1;
		}
	}
	double read_ns = nanoseconds_since(&start) / iterations;

	printf("%.1f %.1f\n", getppid_ns, read_ns);
	return 0;
}
