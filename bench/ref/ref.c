// SPDX-License-Identifier: MIT
/*
 * ref: the minimal reference client for the benchmarks. It does the same protocol steps as
 * vfio-migration (v1: spec steps a-f / resuming a-c, data section by mmap where the sparse
 * capability allows, else pread/pwrite, in the device's windows; v2: data_fd reads of 1 MiB,
 * this client's fastest: at vfio-migration's 4 MiB its save and its pipe were slower, see
 * docs/performance.md) and nothing else: no checksums, no stream format, no policy. Its
 * records are [u64 length][data].
 *
 *   ref v1-save|v2-save UUID OUTFILE     ref v1-load|v2-load UUID INFILE     ref memcpy BYTES
 *   ref v1-pipe|v2-pipe SRC DST: device to device, a saving child writing into a pipe the loader reads
 *   ref v2-live[-threads] SRC1[,SRC2...] DST1[,DST2...]: a live migration device to device (below)
 * Prints one JSON line: {"ms":..,"stopCopyMs":..,"bytes":..} (v2-live: its downtime too).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define V2_CHUNK (1 << 20)
/* The PRE_COPY states (enum vfio_device_mig_state, 6.2+; the host's 6.1 header has none). */
#define STATE_PRE_COPY 6
#define STATE_PRE_COPY_P2P 7
#define MIG_REGION 9

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *what)
{
	fprintf(stderr, "ref: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int open_device(const char *uuid)
{
	char path[256], link[256];
	ssize_t n;
	int container, group, device;
	struct vfio_group_status status = { .argsz = sizeof(status) };

	snprintf(path, sizeof(path), "/sys/bus/mdev/devices/%s/iommu_group", uuid);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		die(path);
	link[n] = 0;
	container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (container < 0)
		die("open /dev/vfio/vfio");
	snprintf(path, sizeof(path), "/dev/vfio/%s", strrchr(link, '/') + 1);
	group = open(path, O_RDWR | O_CLOEXEC);
	if (group < 0)
		die(path);
	if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) < 0 || !(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		die("group not viable");
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) < 0)
		die("VFIO_GROUP_SET_CONTAINER");
	if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0)
		die("VFIO_SET_IOMMU");
	device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, uuid);
	if (device < 0)
		die("VFIO_GROUP_GET_DEVICE_FD");
	return device;
}

struct v1 {
	int fd;
	uint64_t base, size;
	uint8_t *map;		/* data section mapping, or NULL */
	uint64_t map_off, map_size;
};

static void v1_open(struct v1 *m, int fd)
{
	uint8_t buf[4096];
	struct vfio_region_info *ri = (void *)buf;
	uint32_t off;

	memset(m, 0, sizeof(*m));
	m->fd = fd;
	memset(buf, 0, sizeof(buf));
	ri->argsz = sizeof(buf);
	ri->index = MIG_REGION;
	if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, ri) < 0)
		die("VFIO_DEVICE_GET_REGION_INFO");
	m->base = ri->offset;
	m->size = ri->size;
	if (!(ri->flags & VFIO_REGION_INFO_FLAG_MMAP) || !(ri->flags & VFIO_REGION_INFO_FLAG_CAPS))
		return;
	for (off = ri->cap_offset; off && off + 8 <= ri->argsz && off < sizeof(buf); ) {
		struct vfio_info_cap_header *h = (void *)(buf + off);

		if (h->id == VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
			struct vfio_region_info_cap_sparse_mmap *s = (void *)h;

			if (s->nr_areas >= 1) {
				m->map_off = s->areas[0].offset;
				m->map_size = s->areas[0].size;
				m->map = mmap(NULL, m->map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
					      m->base + m->map_off);
				if (m->map == MAP_FAILED)
					die("mmap");
			}
			break;
		}
		off = h->next;
	}
}

static uint64_t rd(struct v1 *m, int at, int width)
{
	uint64_t v = 0;

	if (pread(m->fd, &v, width, m->base + at) != width)
		die("pread register");
	return v;
}

static void wr(struct v1 *m, int at, int width, uint64_t v)
{
	if (pwrite(m->fd, &v, width, m->base + at) != width)
		die("pwrite register");
}

static void v1_state(struct v1 *m, uint32_t state)
{
	uint32_t cur = rd(m, 0, 4);

	wr(m, 0, 4, (cur & ~7u) | state);
}

/* Data window [off, off+len): mapped part by memcpy, the rest by one pread/pwrite. */
static void v1_data(struct v1 *m, uint64_t off, uint8_t *buf, uint64_t len, int write_dir)
{
	if (m->map && off >= m->map_off && off + len <= m->map_off + m->map_size) {
		if (write_dir)
			memcpy(m->map + (off - m->map_off), buf, len);
		else
			memcpy(buf, m->map + (off - m->map_off), len);
		return;
	}
	if ((write_dir ? pwrite(m->fd, buf, len, m->base + off) : pread(m->fd, buf, len, m->base + off)) != (ssize_t)len)
		die("data pread/pwrite");
}

static void out_all(int fd, const void *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w <= 0)
			die("write output");
		p = (const uint8_t *)p + w;
		n -= w;
	}
}

static int in_all(int fd, void *p, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, (uint8_t *)p + got, n - got);

		if (r < 0)
			die("read input");
		if (r == 0)
			return got == 0 ? 0 : -1;
		got += r;
	}
	return 1;
}

static void v1_save(int dev, int out)
{
	struct v1 m;
	uint8_t *buf = NULL;
	uint64_t cap = 0, bytes = 0;
	double t0, t1;

	v1_open(&m, dev);
	t0 = now_ms();
	v1_state(&m, VFIO_DEVICE_STATE_V1_SAVING);
	t1 = now_ms();
	while (rd(&m, 8, 8)) {
		uint64_t off = rd(&m, 16, 8), size = rd(&m, 24, 8);

		if (size > cap) {
			buf = realloc(buf, size);
			cap = size;
		}
		v1_data(&m, off, buf, size, 0);
		out_all(out, &size, 8);
		out_all(out, buf, size);
		bytes += size;
	}
	v1_state(&m, VFIO_DEVICE_STATE_V1_STOP);
	printf("{\"ms\":%.3f,\"stopCopyMs\":%.3f,\"bytes\":%llu}\n", now_ms() - t0, now_ms() - t1,
	       (unsigned long long)bytes);
}

static void v1_load(int dev, int in)
{
	struct v1 m;
	uint8_t *buf = NULL;
	uint64_t cap = 0, bytes = 0, size;
	double t0;

	v1_open(&m, dev);
	t0 = now_ms();
	v1_state(&m, VFIO_DEVICE_STATE_V1_RESUMING);
	while (in_all(in, &size, 8) == 1) {
		uint64_t off;

		if (size > cap) {
			buf = realloc(buf, size);
			cap = size;
		}
		if (in_all(in, buf, size) != 1)
			die("truncated input");
		off = rd(&m, 16, 8);
		v1_data(&m, off, buf, size, 1);
		wr(&m, 24, 8, size);
		bytes += size;
	}
	v1_state(&m, VFIO_DEVICE_STATE_V1_RUNNING);
	printf("{\"ms\":%.3f,\"bytes\":%llu}\n", now_ms() - t0, (unsigned long long)bytes);
}

static int v2_set(int dev, uint32_t state)
{
	struct {
		struct vfio_device_feature f;
		struct vfio_device_feature_mig_state s;
	} arg = { .f = { .argsz = sizeof(arg),
			 .flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE },
		  .s = { .device_state = state, .data_fd = -1 } };

	if (ioctl(dev, VFIO_DEVICE_FEATURE, &arg) < 0)
		die("VFIO_DEVICE_FEATURE MIG_DEVICE_STATE");
	return arg.s.data_fd;
}

static void v2_save(int dev, int out)
{
	uint8_t *buf = malloc(V2_CHUNK);
	uint64_t bytes = 0;
	double t0, t1;
	int fd;

	t0 = now_ms();
	v2_set(dev, VFIO_DEVICE_STATE_STOP);
	t1 = now_ms();
	fd = v2_set(dev, VFIO_DEVICE_STATE_STOP_COPY);
	for (;;) {
		ssize_t n = read(fd, buf, V2_CHUNK);
		uint64_t len;

		if (n < 0)
			die("read data_fd");
		if (n == 0)
			break;
		len = n;
		out_all(out, &len, 8);
		out_all(out, buf, n);
		bytes += n;
	}
	v2_set(dev, VFIO_DEVICE_STATE_STOP);
	close(fd);
	printf("{\"ms\":%.3f,\"stopCopyMs\":%.3f,\"bytes\":%llu}\n", now_ms() - t0, now_ms() - t1,
	       (unsigned long long)bytes);
}

static void v2_load(int dev, int in)
{
	uint8_t *buf = malloc(V2_CHUNK);
	uint64_t size, bytes = 0;
	double t0 = now_ms();
	int fd;

	v2_set(dev, VFIO_DEVICE_STATE_STOP);
	fd = v2_set(dev, VFIO_DEVICE_STATE_RESUMING);
	while (in_all(in, &size, 8) == 1) {
		if (size > V2_CHUNK || in_all(in, buf, size) != 1)
			die("bad input");
		out_all(fd, buf, size);
		bytes += size;
	}
	v2_set(dev, VFIO_DEVICE_STATE_STOP);
	close(fd);
	v2_set(dev, VFIO_DEVICE_STATE_RUNNING);
	printf("{\"ms\":%.3f,\"bytes\":%llu}\n", now_ms() - t0, (unsigned long long)bytes);
}

/*
 * v2-live: a live migration of each source into its destination, as linux/vfio.h orders several
 * devices: all sources to PRE_COPY_P2P before any stops, every destination out of RESUMING
 * before any runs. With no stream, no checks and no messages: the floor of a multi-device
 * downtime. v2-live does the pairs one after the other in one thread at each step; v2-live-threads
 * gives each pair a thread of its own (the steps still in step, through a barrier).
 */
struct live_pair {
	int src, dst, src_data, dst_data;
	uint8_t *buf;
	uint64_t stop_copy_bytes;
};

static pthread_barrier_t live_step;
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static double live_first_stop, live_last_running;

/* Reads `from` into `to` until a read brings nothing (0; while pre-copying also ENOMSG or EAGAIN), at most max_reads reads. */
static uint64_t move_data(int from, int to, uint8_t *buf, long max_reads)
{
	uint64_t moved = 0;

	for (long reads = 0; reads < max_reads; reads++) {
		ssize_t n = read(from, buf, V2_CHUNK);

		if (n < 0 && (errno == ENOMSG || errno == EAGAIN))
			break;
		if (n < 0)
			die("read data_fd");
		if (n == 0)
			break;
		out_all(to, buf, n);
		moved += n;
	}
	return moved;
}

/* The test driver's state checksum (BAR0 offset 0x10). */
static uint64_t bar0_checksum(int dev)
{
	struct vfio_region_info ri = { .argsz = sizeof(ri), .index = VFIO_PCI_BAR0_REGION_INDEX };
	uint64_t sum;

	if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri) < 0)
		die("VFIO_DEVICE_GET_REGION_INFO BAR0");
	if (pread(dev, &sum, 8, ri.offset + 0x10) != 8)
		die("pread BAR0");
	return sum;
}

static void live_time(double *at, int first)
{
	double t = now_ms();

	pthread_mutex_lock(&live_lock);
	if (!*at || (first ? t < *at : t > *at))
		*at = t;
	pthread_mutex_unlock(&live_lock);
}

/* Step `step` of one pair; steps 3 to 5 are the downtime. */
static void live_step_of(struct live_pair *p, int step)
{
	switch (step) {
	case 0:
		v2_set(p->dst, VFIO_DEVICE_STATE_STOP);
		p->dst_data = v2_set(p->dst, VFIO_DEVICE_STATE_RESUMING);
		p->src_data = v2_set(p->src, STATE_PRE_COPY);
		move_data(p->src_data, p->dst_data, p->buf, 1024);
		break;
	case 1:
		v2_set(p->src, STATE_PRE_COPY_P2P);
		break;
	case 2:
		move_data(p->src_data, p->dst_data, p->buf, 64);
		break;
	case 3:
		/* From the first stopping arc's issue (the device stops inside that ioctl). */
		live_time(&live_first_stop, 1);
		v2_set(p->src, VFIO_DEVICE_STATE_STOP_COPY);
		p->stop_copy_bytes = move_data(p->src_data, p->dst_data, p->buf, LONG_MAX);
		v2_set(p->dst, VFIO_DEVICE_STATE_STOP);
		break;
	case 4:
		v2_set(p->dst, VFIO_DEVICE_STATE_RUNNING_P2P);
		break;
	case 5:
		v2_set(p->dst, VFIO_DEVICE_STATE_RUNNING);
		live_time(&live_last_running, 0);
		break;
	}
}

#define LIVE_STEPS 6

static void *live_thread(void *arg)
{
	for (int step = 0; step < LIVE_STEPS; step++) {
		live_step_of(arg, step);
		pthread_barrier_wait(&live_step);
	}
	return NULL;
}

/* Splits a comma-separated list in place; returns how many items went into `out` (-1: too many). */
static int split_ids(char *list, char **out, int max)
{
	int n = 0;

	for (char *id = strtok(list, ","); id; id = strtok(NULL, ","))
		if (n < max)
			out[n++] = id;
		else
			return -1;
	return n;
}

static int v2_live(char *src_list, char *dst_list, int threaded)
{
	char *srcs[64], *dsts[64];
	int n = split_ids(src_list, srcs, 64), exact = 1;
	struct live_pair pairs[64];
	pthread_t threads[64];
	double t0 = now_ms();

	if (n < 1 || split_ids(dst_list, dsts, 64) != n) {
		fprintf(stderr, "ref v2-live: as many destinations as sources (1 to 64)\n");
		return 2;
	}
	memset(pairs, 0, sizeof(pairs));
	for (int i = 0; i < n; i++) {
		pairs[i].src = open_device(srcs[i]);
		pairs[i].dst = open_device(dsts[i]);
		pairs[i].buf = malloc(V2_CHUNK);
		if (!pairs[i].buf)
			die("malloc");
	}
	if (threaded) {
		if (pthread_barrier_init(&live_step, NULL, n))
			die("pthread_barrier_init");
		for (int i = 0; i < n; i++)
			if (pthread_create(&threads[i], NULL, live_thread, &pairs[i]))
				die("pthread_create");
		for (int i = 0; i < n; i++)
			pthread_join(threads[i], NULL);
	} else {
		for (int step = 0; step < LIVE_STEPS; step++)
			for (int i = 0; i < n; i++)
				live_step_of(&pairs[i], step);
	}
	printf("{\"devices\":%d,\"stopCopyBytes\":[", n);
	for (int i = 0; i < n; i++) {
		/* The source stays in STOP_COPY, its state final, until this process ends. */
		exact &= bar0_checksum(pairs[i].src) == bar0_checksum(pairs[i].dst);
		printf("%s%llu", i ? "," : "", (unsigned long long)pairs[i].stop_copy_bytes);
	}
	printf("],\"downtimeMs\":%.3f,\"ms\":%.3f,\"exact\":%s}\n", live_last_running - live_first_stop,
	       now_ms() - t0, exact ? "true" : "false");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "memcpy")) {
		size_t n = strtoull(argv[2], NULL, 0);
		uint8_t *a = malloc(n), *b = malloc(n);
		double t0;

		memset(a, 1, n);
		memset(b, 2, n);
		t0 = now_ms();
		memcpy(b, a, n);
		printf("{\"ms\":%.3f,\"bytes\":%zu,\"check\":%d}\n", now_ms() - t0, n, b[n / 2]);
		return 0;
	}
	if (argc == 4 && !strncmp(argv[1], "v2-live", 7))
		return v2_live(argv[2], argv[3], !strcmp(argv[1], "v2-live-threads"));
	if (argc != 4) {
		fprintf(stderr, "usage: ref v1-save|v1-load|v2-save|v2-load UUID FILE | ref v1-pipe|v2-pipe SRC DST | "
				"ref v2-live[-threads] SRC1[,SRC2...] DST1[,DST2...] | ref memcpy BYTES\n");
		return 2;
	}
	if (strstr(argv[1], "-pipe")) {
		int v1 = !strncmp(argv[1], "v1", 2), p[2], status;
		double t0 = now_ms();
		pid_t child;

		if (pipe2(p, O_CLOEXEC) < 0)
			die("pipe");
		child = fork();
		if (child < 0)
			die("fork");
		if (child == 0) {
			/* The saver: its own JSON line is not the result. */
			close(p[0]);
			if (!freopen("/dev/null", "w", stdout))
				die("freopen");
			if (v1)
				v1_save(open_device(argv[2]), p[1]);
			else
				v2_save(open_device(argv[2]), p[1]);
			fflush(stdout);
			_exit(0);
		}
		close(p[1]);
		int result = dup(1); /* the loader prints its own line too: keep the real stdout for ours */

		if (result < 0 || !freopen("/dev/null", "w", stdout))
			die("stdout");
		if (v1)
			v1_load(open_device(argv[3]), p[0]);
		else
			v2_load(open_device(argv[3]), p[0]);
		if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			die("the saving child failed");
		dprintf(result, "{\"ms\":%.3f}\n", now_ms() - t0);
		return 0;
	}
	int dev = open_device(argv[2]);
	int save = strstr(argv[1], "save") != NULL;
	int file = save ? open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : open(argv[3], O_RDONLY | O_CLOEXEC);

	if (file < 0)
		die(argv[3]);
	if (!strcmp(argv[1], "v1-save"))
		v1_save(dev, file);
	else if (!strcmp(argv[1], "v1-load"))
		v1_load(dev, file);
	else if (!strcmp(argv[1], "v2-save"))
		v2_save(dev, file);
	else if (!strcmp(argv[1], "v2-load"))
		v2_load(dev, file);
	else
		return 2;
	return 0;
}
