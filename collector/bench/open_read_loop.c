/*
 * The workload of DESIGN.md §7: open, read 8 KiB from, and close one of 64
 * files in DIR, ITERATIONS times; prints the elapsed seconds.
 *
 *   open_read_loop DIR ITERATIONS [RATE]
 *
 * With RATE (iterations per second) the loop is paced: it never runs ahead
 * of RATE × elapsed time, sleeping when it is, so a capacity test can hold
 * a steady event rate. It still prints the elapsed seconds; a loop that
 * could not keep up took longer than ITERATIONS / RATE.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double seconds_since(const struct timespec *start)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 4) {
		fprintf(stderr, "usage: %s DIR ITERATIONS [RATE]\n", argv[0]);
		return 2;
	}
	long iterations = atol(argv[2]);
	double rate = argc == 4 ? atof(argv[3]) : 0;
	if (iterations <= 0 || rate < 0) {
		fprintf(stderr, "%s: ITERATIONS must be positive and RATE not negative\n", argv[0]);
		return 2;
	}
	char path[4096];
	static char buf[8192];
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (long i = 0; i < iterations; i++) {
		/* Pace in steps of 64 iterations: a clock read per iteration
		 * would add to what is measured. */
		if (rate > 0 && i % 64 == 0) {
			double ahead = i / rate - seconds_since(&start);
			if (ahead > 0) {
				struct timespec pause = { (time_t)ahead,
							  (long)((ahead - (time_t)ahead) * 1e9) };
				nanosleep(&pause, NULL);
			}
		}
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
	printf("%.3f\n", seconds_since(&start));
	return 0;
}
