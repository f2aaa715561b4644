// SPDX-License-Identifier: GPL-2.0-only
/*
 * vmtc: a tiny VFIO client for the vfio_mig_test driver's own tests.
 *
 *   vmtc UUID "cmd arg..." ["cmd arg..." ...]
 *
 * Opens the mdev through the container/group API, runs each command in order
 * on the same device fd and prints one line per command:
 *   "ok [values]"  or  "err ENAME errno".
 * A failing command does not stop the run; the exit status is 0 unless the
 * device could not be opened or a command was malformed (2).
 * Plain C over the raw ioctls, pread/pwrite and mmap; no other dependency.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/vfio.h>

#ifndef VFIO_MIG_GET_PRECOPY_INFO
#define VFIO_MIG_GET_PRECOPY_INFO _IO(VFIO_TYPE, VFIO_BASE + 21)
struct vfio_precopy_info {
	uint32_t argsz;
	uint32_t flags;
	uint64_t initial_bytes;
	uint64_t dirty_bytes;
};
#endif
#ifndef VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
#define VFIO_DEVICE_FEATURE_MIG_DATA_SIZE 9
struct vfio_device_feature_mig_data_size {
	uint64_t stop_copy_length;
};
#endif

#define OFFSET_SHIFT 40
#define REGION_OFF(i) ((uint64_t)(i) << OFFSET_SHIFT)
#define MIG_INDEX 9
#define MAX_ARGS 8

static int container = -1, group = -1;
static const char *dev_uuid;
static int devfd[2] = { -1, -1 };
static int cur;			/* which device fd commands use */
static int datafd = -1;		/* v2 data fd */
static int efd = -1;		/* INTx eventfd */
static uint8_t *map;		/* last mmap */
static size_t map_len;

static void out(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("ok", stdout);
	if (fmt && *fmt) {
		fputc(' ', stdout);
		vfprintf(stdout, fmt, ap);
	}
	fputc('\n', stdout);
	va_end(ap);
	fflush(stdout);
}

static void fail(int e)
{
	const char *n = strerrorname_np(e);

	printf("err %s %d\n", n ? n : "E?", e);
	fflush(stdout);
}

static uint64_t num(const char *s)
{
	return strtoull(s, NULL, 0);
}

static int dev(void)
{
	return devfd[cur];
}

static int rd(uint64_t pos, void *buf, size_t len)
{
	ssize_t n = pread(dev(), buf, len, (off_t)pos);

	if (n < 0)
		return -errno;
	return n == (ssize_t)len ? 0 : -EIO;
}

static int wr(uint64_t pos, const void *buf, size_t len)
{
	ssize_t n = pwrite(dev(), buf, len, (off_t)pos);

	if (n < 0)
		return -errno;
	return n == (ssize_t)len ? 0 : -EIO;
}

/* v1 registers at native width */
static int v1_rd32(uint64_t off, uint32_t *v)
{
	return rd(REGION_OFF(MIG_INDEX) + off, v, 4);
}

static int v1_rd64(uint64_t off, uint64_t *v)
{
	return rd(REGION_OFF(MIG_INDEX) + off, v, 8);
}

static int v1_wr32(uint64_t off, uint32_t v)
{
	return wr(REGION_OFF(MIG_INDEX) + off, &v, 4);
}

static int v1_wr64(uint64_t off, uint64_t v)
{
	return wr(REGION_OFF(MIG_INDEX) + off, &v, 8);
}

static int v1_to(uint32_t bits)
{
	uint32_t st;
	int r = v1_rd32(0, &st);

	if (r)
		return r;
	return v1_wr32(0, (st & ~7u) | bits);
}

static uint64_t fnv(const uint8_t *b, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	while (n--) {
		h ^= *b++;
		h *= 0x100000001b3ULL;
	}
	return h;
}

static int open_device(const char *uuid)
{
	char path[PATH_MAX], link[PATH_MAX];
	struct vfio_group_status gs = { .argsz = sizeof(gs) };
	ssize_t n;

	snprintf(path, sizeof(path), "/sys/bus/mdev/devices/%s/iommu_group",
		 uuid);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return -errno;
	link[n] = 0;
	container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (container < 0)
		return -errno;
	snprintf(path, sizeof(path), "/dev/vfio/%s", basename(link));
	group = open(path, O_RDWR | O_CLOEXEC);
	if (group < 0)
		return -errno;
	if (ioctl(group, VFIO_GROUP_GET_STATUS, &gs) < 0)
		return -errno;
	if (!(gs.flags & VFIO_GROUP_FLAGS_VIABLE))
		return -EBUSY;
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) < 0)
		return -errno;
	if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0 &&
	    ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU) < 0)
		return -errno;
	devfd[0] = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, uuid);
	if (devfd[0] < 0)
		return -errno;
	return 0;
}

static void cmd_region(int idx, uint32_t argsz_override)
{
	uint32_t argsz = argsz_override ? argsz_override : 512;
	struct vfio_region_info *ri = calloc(1, argsz < sizeof(*ri) ? sizeof(*ri) : argsz);
	char caps[256] = "";
	size_t cl = 0;
	uint32_t off;
	int guard = 0;

	ri->argsz = argsz;
	ri->index = idx;
	if (ioctl(dev(), VFIO_DEVICE_GET_REGION_INFO, ri) < 0) {
		fail(errno);
		free(ri);
		return;
	}
	if ((ri->flags & VFIO_REGION_INFO_FLAG_CAPS) && ri->cap_offset &&
	    ri->argsz <= argsz) {
		for (off = ri->cap_offset; off && off + 8 <= argsz && guard++ < 16;) {
			struct vfio_info_cap_header *h = (void *)((char *)ri + off);

			if (h->id == VFIO_REGION_INFO_CAP_TYPE) {
				struct vfio_region_info_cap_type *t = (void *)h;

				cl += snprintf(caps + cl, sizeof(caps) - cl,
					       " type=%u/%u", t->type, t->subtype);
			} else if (h->id == VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
				struct vfio_region_info_cap_sparse_mmap *s = (void *)h;
				uint32_t i;

				cl += snprintf(caps + cl, sizeof(caps) - cl,
					       " sparse=");
				for (i = 0; i < s->nr_areas && i < 4; i++)
					cl += snprintf(caps + cl, sizeof(caps) - cl,
						       "%s0x%llx:0x%llx", i ? "," : "",
						       (unsigned long long)s->areas[i].offset,
						       (unsigned long long)s->areas[i].size);
			} else {
				cl += snprintf(caps + cl, sizeof(caps) - cl,
					       " cap%u", h->id);
			}
			if (h->next && h->next <= off)
				break;
			off = h->next;
		}
	}
	out("size=0x%llx offset=0x%llx flags=0x%x argsz=%u cap_offset=%u%s",
	    (unsigned long long)ri->size, (unsigned long long)ri->offset,
	    ri->flags, ri->argsz, ri->cap_offset, caps);
	free(ri);
}

/* v1 save: records are appended to f as [u64 length][bytes]. */
static void cmd_v1save(const char *file, int precopy, int use_mmap)
{
	struct vfio_region_info ri = { .argsz = sizeof(ri), .index = MIG_INDEX };
	uint64_t pending, doff, dsize, total = 0;
	uint8_t *mm = NULL, *buf = NULL;
	int records = 0, r = 0, iter;
	FILE *f = fopen(file, "wb");

	if (!f || ioctl(dev(), VFIO_DEVICE_GET_REGION_INFO, &ri) < 0) {
		fail(errno);
		if (f)
			fclose(f);
		return;
	}
	if (use_mmap) {
		mm = mmap(NULL, ri.size - 4096, PROT_READ | PROT_WRITE,
			  MAP_SHARED, dev(), REGION_OFF(MIG_INDEX) + 4096);
		if (mm == MAP_FAILED) {
			fail(errno);
			fclose(f);
			return;
		}
	}
	buf = malloc(ri.size);

	for (iter = 0; iter < 2 && !r; iter++) {
		int rounds = iter == 0 ? precopy : INT_MAX;

		if (iter == 0 && !precopy)
			continue;
		r = v1_to(iter == 0 ? 3 : 2);
		while (!r && rounds-- > 0) {
			r = v1_rd64(8, &pending);		/* a / f */
			if (r || !pending)
				break;
			r = v1_rd64(16, &doff);			/* b */
			if (!r)
				r = v1_rd64(24, &dsize);	/* c */
			if (r)
				break;
			if (doff < 4096 || dsize > ri.size - doff) {
				r = -ERANGE;
				break;
			}
			if (!dsize) {
				if (iter == 1)
					r = -ENODATA;
				break;
			}
			if (mm)
				memcpy(buf, mm + (doff - 4096), dsize);
			else
				r = rd(REGION_OFF(MIG_INDEX) + doff, buf, dsize);
			if (r)
				break;
			fwrite(&dsize, 8, 1, f);
			fwrite(buf, 1, dsize, f);
			total += dsize;
			records++;
		}
	}
	if (!r)
		r = v1_to(0);
	fclose(f);
	if (mm)
		munmap(mm, ri.size - 4096);
	free(buf);
	if (r)
		fail(-r);
	else
		out("records=%d bytes=%llu", records, (unsigned long long)total);
}

/* Reads records in the current state until pending_bytes is 0 or max. */
static void cmd_v1drain(const char *file, int max, int use_mmap)
{
	struct vfio_region_info ri = { .argsz = sizeof(ri), .index = MIG_INDEX };
	uint64_t pending = 0, doff, dsize, total = 0;
	uint8_t *mm = NULL, *buf;
	int records = 0, r = 0;
	FILE *f = fopen(file, "ab");

	if (!f || ioctl(dev(), VFIO_DEVICE_GET_REGION_INFO, &ri) < 0) {
		fail(errno);
		if (f)
			fclose(f);
		return;
	}
	if (use_mmap) {
		mm = mmap(NULL, ri.size - 4096, PROT_READ, MAP_SHARED, dev(),
			  REGION_OFF(MIG_INDEX) + 4096);
		if (mm == MAP_FAILED) {
			fail(errno);
			fclose(f);
			return;
		}
	}
	buf = malloc(ri.size);
	while (records < max) {
		r = v1_rd64(8, &pending);
		if (r || !pending)
			break;
		r = v1_rd64(16, &doff);
		if (!r)
			r = v1_rd64(24, &dsize);
		if (r)
			break;
		if (doff < 4096 || dsize > ri.size - doff) {
			r = -ERANGE;
			break;
		}
		if (!dsize) {
			r = -ENODATA;
			break;
		}
		if (mm)
			memcpy(buf, mm + (doff - 4096), dsize);
		else
			r = rd(REGION_OFF(MIG_INDEX) + doff, buf, dsize);
		if (r)
			break;
		fwrite(&dsize, 8, 1, f);
		fwrite(buf, 1, dsize, f);
		total += dsize;
		records++;
	}
	fclose(f);
	if (mm)
		munmap(mm, ri.size - 4096);
	free(buf);
	if (r)
		fail(-r);
	else
		out("records=%d bytes=%llu pending=%llu", records,
		    (unsigned long long)total, (unsigned long long)pending);
}

static void cmd_v1load(const char *file, int use_mmap, uint32_t final)
{
	struct vfio_region_info ri = { .argsz = sizeof(ri), .index = MIG_INDEX };
	uint8_t *mm = NULL, *buf;
	uint64_t len, doff;
	int records = 0, r;
	FILE *f = fopen(file, "rb");

	if (!f || ioctl(dev(), VFIO_DEVICE_GET_REGION_INFO, &ri) < 0) {
		fail(errno);
		if (f)
			fclose(f);
		return;
	}
	if (use_mmap) {
		mm = mmap(NULL, ri.size - 4096, PROT_READ | PROT_WRITE,
			  MAP_SHARED, dev(), REGION_OFF(MIG_INDEX) + 4096);
		if (mm == MAP_FAILED) {
			fail(errno);
			fclose(f);
			return;
		}
	}
	buf = malloc(ri.size);
	r = v1_to(4);
	while (!r && fread(&len, 8, 1, f) == 1) {
		if (len > ri.size - 4096) {
			r = -ERANGE;
			break;
		}
		if (fread(buf, 1, len, f) != len) {
			r = -ENODATA;
			break;
		}
		r = v1_rd64(16, &doff);				/* a */
		if (r)
			break;
		if (doff < 4096 || len > ri.size - doff) {
			r = -ERANGE;
			break;
		}
		if (mm)						/* b */
			memcpy(mm + (doff - 4096), buf, len);
		else
			r = wr(REGION_OFF(MIG_INDEX) + doff, buf, len);
		if (!r)
			r = v1_wr64(24, len);			/* c */
		records++;
	}
	if (!r)
		r = v1_to(final);
	fclose(f);
	if (mm)
		munmap(mm, ri.size - 4096);
	free(buf);
	if (r)
		printf("err %s %d records=%d\n", strerrorname_np(-r) ?: "E?", -r,
		       records);
	else
		out("records=%d", records);
	fflush(stdout);
}

static int feature(uint32_t flags, void *payload, size_t plen)
{
	struct vfio_device_feature *f = calloc(1, sizeof(*f) + plen);
	int r;

	f->argsz = sizeof(*f) + plen;
	f->flags = flags;
	if (payload && plen)
		memcpy(f->data, payload, plen);
	r = ioctl(dev(), VFIO_DEVICE_FEATURE, f);
	if (r < 0)
		r = -errno;
	else if (payload && plen)
		memcpy(payload, f->data, plen);
	free(f);
	return r;
}

static const char *const v2names[] = {
	"error", "stop", "running", "stop_copy", "resuming", "running_p2p",
	"pre_copy", "pre_copy_p2p",
};

static int v2state(const char *s)
{
	unsigned int i;

	for (i = 0; i < sizeof(v2names) / sizeof(v2names[0]); i++)
		if (!strcmp(s, v2names[i]))
			return i;
	return (int)num(s);
}

static void cmd_v2read(const char *file, uint64_t chunk, int appendf)
{
	FILE *f = fopen(file, appendf ? "ab" : "wb");
	uint64_t total = 0;
	uint8_t *buf;
	const char *end = "eof";

	if (!f) {
		fail(errno);
		return;
	}
	buf = malloc(chunk);
	for (;;) {
		ssize_t n = read(datafd, buf, chunk);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == ENOMSG) {
			end = "enomsg";
			break;
		}
		if (n < 0) {
			int e = errno;

			fclose(f);
			free(buf);
			printf("err %s %d bytes=%llu\n", strerrorname_np(e) ?: "E?",
			       e, (unsigned long long)total);
			fflush(stdout);
			return;
		}
		if (n == 0)
			break;
		fwrite(buf, 1, n, f);
		total += n;
	}
	fclose(f);
	free(buf);
	out("bytes=%llu end=%s", (unsigned long long)total, end);
}

static void cmd_v2write(const char *file, uint64_t chunk)
{
	FILE *f = fopen(file, "rb");
	uint64_t total = 0;
	uint8_t *buf;
	size_t n;

	if (!f) {
		fail(errno);
		return;
	}
	buf = malloc(chunk);
	while ((n = fread(buf, 1, chunk, f)) > 0) {
		size_t off = 0;

		while (off < n) {
			ssize_t w = write(datafd, buf + off, n - off);

			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				int e = errno;

				fclose(f);
				free(buf);
				printf("err %s %d bytes=%llu\n",
				       strerrorname_np(e) ?: "E?", e,
				       (unsigned long long)total);
				fflush(stdout);
				return;
			}
			off += w;
			total += w;
		}
	}
	fclose(f);
	free(buf);
	out("bytes=%llu", (unsigned long long)total);
}

static void setval(uint8_t *p, int w, uint64_t v)
{
	memcpy(p, &v, w);	/* little-endian host */
}

static uint64_t getval(const uint8_t *p, int w)
{
	uint64_t v = 0;

	memcpy(&v, p, w);
	return v;
}

static int run(int argc, char **a)
{
	const char *c = a[0];
	int r;

#define NEED(n) do { if (argc < (n) + 1) return -1; } while (0)
	if (!strcmp(c, "info")) {
		struct vfio_device_info di = { .argsz = sizeof(di) };

		if (ioctl(dev(), VFIO_DEVICE_GET_INFO, &di) < 0)
			fail(errno);
		else
			out("flags=0x%x regions=%u irqs=%u", di.flags,
			    di.num_regions, di.num_irqs);
	} else if (!strcmp(c, "region")) {
		NEED(1);
		cmd_region((int)num(a[1]), argc > 2 ? (uint32_t)num(a[2]) : 0);
	} else if (!strcmp(c, "irq")) {
		struct vfio_irq_info ii = { .argsz = sizeof(ii) };

		NEED(1);
		ii.index = num(a[1]);
		if (ioctl(dev(), VFIO_DEVICE_GET_IRQ_INFO, &ii) < 0)
			fail(errno);
		else
			out("flags=0x%x count=%u", ii.flags, ii.count);
	} else if (!strcmp(c, "intx")) {
		char b[sizeof(struct vfio_irq_set) + sizeof(int32_t)];
		struct vfio_irq_set *s = (void *)b;
		int32_t fd;

		if (efd < 0)
			efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		fd = argc > 1 ? (int32_t)strtol(a[1], NULL, 0) : efd;
		s->argsz = sizeof(b);
		s->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
		s->index = VFIO_PCI_INTX_IRQ_INDEX;
		s->start = 0;
		s->count = 1;
		memcpy(s->data, &fd, sizeof(fd));
		if (ioctl(dev(), VFIO_DEVICE_SET_IRQS, s) < 0)
			fail(errno);
		else
			out("");
	} else if (!strcmp(c, "intxfire")) {
		struct vfio_irq_set s = {
			.argsz = sizeof(s), .index = VFIO_PCI_INTX_IRQ_INDEX,
			.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
			.count = 1,
		};
		uint64_t v = 0;

		if (ioctl(dev(), VFIO_DEVICE_SET_IRQS, &s) < 0) {
			fail(errno);
			return 0;
		}
		if (efd >= 0 && read(efd, &v, 8) != 8)
			v = 0;
		out("count=%llu", (unsigned long long)v);
	} else if (!strcmp(c, "irqset")) {	/* index flags start count */
		struct vfio_irq_set s = { .argsz = sizeof(s) };

		NEED(4);
		s.index = num(a[1]);
		s.flags = num(a[2]);
		s.start = num(a[3]);
		s.count = num(a[4]);
		if (ioctl(dev(), VFIO_DEVICE_SET_IRQS, &s) < 0)
			fail(errno);
		else
			out("");
	} else if (!strcmp(c, "rd") || !strcmp(c, "rawrd")) {
		uint8_t b[8];
		uint64_t pos;
		int w;

		NEED(2);
		if (c[0] == 'r' && c[1] == 'd') {
			NEED(3);
			pos = REGION_OFF(num(a[1])) + num(a[2]);
			w = (int)num(a[3]);
		} else {
			pos = num(a[1]);
			w = (int)num(a[2]);
		}
		if (w < 1 || w > 8)
			return -1;
		r = rd(pos, b, w);
		if (r)
			fail(-r);
		else
			out("0x%llx", (unsigned long long)getval(b, w));
	} else if (!strcmp(c, "wr") || !strcmp(c, "rawwr")) {
		uint8_t b[8];
		uint64_t pos;
		int w;

		if (c[0] == 'w' && c[1] == 'r') {
			NEED(4);
			pos = REGION_OFF(num(a[1])) + num(a[2]);
			w = (int)num(a[3]);
			setval(b, w < 8 ? w : 8, num(a[4]));
		} else {
			NEED(3);
			pos = num(a[1]);
			w = (int)num(a[2]);
			setval(b, w < 8 ? w : 8, num(a[3]));
		}
		if (w < 1 || w > 8)
			return -1;
		r = wr(pos, b, w);
		if (r)
			fail(-r);
		else
			out("");
	} else if (!strcmp(c, "rdn")) {	/* idx off len */
		uint64_t len;
		uint8_t *b;
		ssize_t n;

		NEED(3);
		len = num(a[3]);
		b = malloc(len ? len : 1);
		n = pread(dev(), b, len, REGION_OFF(num(a[1])) + num(a[2]));
		if (n < 0)
			fail(errno);
		else
			out("n=%zd hash=0x%016llx", n,
			    (unsigned long long)fnv(b, n));
		free(b);
	} else if (!strcmp(c, "wrn")) {	/* idx off len byte */
		uint64_t len;
		uint8_t *b;
		ssize_t n;

		NEED(4);
		len = num(a[3]);
		b = malloc(len ? len : 1);
		memset(b, (int)num(a[4]), len);
		n = pwrite(dev(), b, len, REGION_OFF(num(a[1])) + num(a[2]));
		if (n < 0)
			fail(errno);
		else
			out("n=%zd", n);
		free(b);
	} else if (!strcmp(c, "mmap")) {	/* idx off len [private] */
		void *m;

		NEED(3);
		if (map)
			munmap(map, map_len);
		map = NULL;
		map_len = num(a[3]);
		m = mmap(NULL, map_len, PROT_READ | PROT_WRITE,
			 argc > 4 && !strcmp(a[4], "private") ? MAP_PRIVATE : MAP_SHARED,
			 dev(), REGION_OFF(num(a[1])) + num(a[2]));
		if (m == MAP_FAILED) {
			fail(errno);
		} else {
			map = m;
			out("");
		}
	} else if (!strcmp(c, "mrd")) {		/* off width */
		NEED(2);
		if (!map || num(a[1]) + num(a[2]) > map_len)
			return -1;
		out("0x%llx", (unsigned long long)getval(map + num(a[1]),
							(int)num(a[2])));
	} else if (!strcmp(c, "mwr")) {		/* off width val */
		NEED(3);
		if (!map || num(a[1]) + num(a[2]) > map_len)
			return -1;
		setval(map + num(a[1]), (int)num(a[2]), num(a[3]));
		out("");
	} else if (!strcmp(c, "munmap")) {
		if (map)
			munmap(map, map_len);
		map = NULL;
		out("");
	} else if (!strcmp(c, "reset")) {
		if (ioctl(dev(), VFIO_DEVICE_RESET) < 0)
			fail(errno);
		else
			out("");
	} else if (!strcmp(c, "ioctl")) {	/* raw command number, no arg */
		NEED(1);
		if (ioctl(dev(), (unsigned long)num(a[1]), 0) < 0)
			fail(errno);
		else
			out("");
	} else if (!strcmp(c, "sleep")) {
		NEED(1);
		usleep(num(a[1]) * 1000);
		out("");
	} else if (!strcmp(c, "open2")) {	/* a second fd on the device */
		devfd[1] = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, dev_uuid);
		if (devfd[1] < 0)
			fail(errno);
		else
			out("");
	} else if (!strcmp(c, "use")) {
		NEED(1);
		cur = num(a[1]) ? 1 : 0;
		out("");
	} else if (!strcmp(c, "closedev")) {
		NEED(1);
		if (map)
			munmap(map, map_len);
		map = NULL;
		close(devfd[num(a[1]) ? 1 : 0]);
		devfd[num(a[1]) ? 1 : 0] = -1;
		out("");
	} else if (!strcmp(c, "csum") || !strcmp(c, "gen") ||
		   !strcmp(c, "ssize")) {
		uint64_t v;

		r = rd(REGION_OFF(0) + (c[0] == 'c' ? 0x10 : c[0] == 'g' ? 0x18 : 0x08),
		       &v, 8);
		if (r)
			fail(-r);
		else
			out("0x%016llx", (unsigned long long)v);
	} else if (!strcmp(c, "mutate")) {
		uint64_t v;

		NEED(1);
		v = num(a[1]);
		r = wr(REGION_OFF(0) + 0x20, &v, 8);
		if (r)
			fail(-r);
		else
			out("");
	} else if (!strcmp(c, "v1state")) {
		uint32_t v;

		r = v1_rd32(0, &v);
		if (r)
			fail(-r);
		else
			out("0x%x", v);
	} else if (!strcmp(c, "v1set")) {	/* raw device_state write */
		NEED(1);
		r = v1_wr32(0, (uint32_t)num(a[1]));
		if (r)
			fail(-r);
		else
			out("");
	} else if (!strcmp(c, "v1to")) {	/* read-modify-write */
		NEED(1);
		r = v1_to((uint32_t)num(a[1]));
		if (r)
			fail(-r);
		else
			out("");
	} else if (!strcmp(c, "v1save")) {	/* file [precopy-rounds] [mmap] */
		NEED(1);
		cmd_v1save(a[1], argc > 2 ? (int)num(a[2]) : 0,
			   argc > 3 && !strcmp(a[3], "mmap"));
	} else if (!strcmp(c, "v1drain")) {	/* file [max] [mmap] */
		NEED(1);
		cmd_v1drain(a[1], argc > 2 ? (int)num(a[2]) : INT_MAX,
			    argc > 3 && !strcmp(a[3], "mmap"));
	} else if (!strcmp(c, "v1load")) {	/* file [mmap] [final-state] */
		NEED(1);
		cmd_v1load(a[1], argc > 2 && !strcmp(a[2], "mmap"),
			   argc > 3 ? (uint32_t)num(a[3]) : 1);
	} else if (!strcmp(c, "v2probe")) {
		struct vfio_device_feature_migration m = { 0 };

		r = feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION,
			    &m, sizeof(m));
		if (r)
			fail(-r);
		else
			out("flags=0x%llx", (unsigned long long)m.flags);
	} else if (!strcmp(c, "v2get")) {
		struct vfio_device_feature_mig_state s = { 0 };

		r = feature(VFIO_DEVICE_FEATURE_GET |
			    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &s, sizeof(s));
		if (r)
			fail(-r);
		else
			out("%s", s.device_state < 8 ? v2names[s.device_state] : "?");
	} else if (!strcmp(c, "v2set")) {
		struct vfio_device_feature_mig_state s = { 0 };

		NEED(1);
		s.device_state = v2state(a[1]);
		s.data_fd = -1;
		r = feature(VFIO_DEVICE_FEATURE_SET |
			    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &s, sizeof(s));
		if (r) {
			fail(-r);
		} else {
			if (s.data_fd >= 0) {
				if (datafd >= 0)
					close(datafd);
				datafd = s.data_fd;
			}
			out("fd=%s", s.data_fd >= 0 ? "yes" : "no");
		}
	} else if (!strcmp(c, "v2size")) {
		struct vfio_device_feature_mig_data_size s = { 0 };

		r = feature(VFIO_DEVICE_FEATURE_GET |
			    VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, &s, sizeof(s));
		if (r)
			fail(-r);
		else
			out("%llu", (unsigned long long)s.stop_copy_length);
	} else if (!strcmp(c, "v2read")) {	/* file [chunk] [append] */
		NEED(1);
		cmd_v2read(a[1], argc > 2 ? num(a[2]) : 1 << 20,
			   argc > 3 && !strcmp(a[3], "append"));
	} else if (!strcmp(c, "v2readn")) {
		uint8_t *b;
		ssize_t n;

		NEED(1);
		b = malloc(num(a[1]) + 1);
		n = read(datafd, b, num(a[1]));
		if (n < 0)
			fail(errno);
		else
			out("n=%zd", n);
		free(b);
	} else if (!strcmp(c, "v2write")) {	/* file [chunk] */
		NEED(1);
		cmd_v2write(a[1], argc > 2 ? num(a[2]) : 1 << 20);
	} else if (!strcmp(c, "v2info")) {
		struct vfio_precopy_info pi = { .argsz = sizeof(pi) };

		if (ioctl(datafd, VFIO_MIG_GET_PRECOPY_INFO, &pi) < 0)
			fail(errno);
		else
			out("initial=%llu dirty=%llu",
			    (unsigned long long)pi.initial_bytes,
			    (unsigned long long)pi.dirty_bytes);
	} else if (!strcmp(c, "v2poll")) {
		struct pollfd p = { .fd = datafd, .events = POLLIN | POLLOUT };

		NEED(0);
		r = poll(&p, 1, argc > 1 ? (int)num(a[1]) : 0);
		if (r < 0)
			fail(errno);
		else
			out("revents=0x%x", p.revents);
	} else if (!strcmp(c, "v2close")) {
		if (datafd >= 0)
			close(datafd);
		datafd = -1;
		out("");
	} else {
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	int i, r;

	if (argc < 2) {
		fprintf(stderr, "usage: vmtc UUID \"cmd args\"...\n");
		return 2;
	}
	dev_uuid = argv[1];
	r = open_device(argv[1]);
	if (r) {
		printf("open: err %s %d\n", strerrorname_np(-r) ?: "E?", -r);
		return 2;
	}
	for (i = 2; i < argc; i++) {
		char *words[MAX_ARGS + 1], *s = strdup(argv[i]), *save = NULL;
		int n = 0;

		for (char *t = strtok_r(s, " ", &save); t && n < MAX_ARGS;
		     t = strtok_r(NULL, " ", &save))
			words[n++] = t;
		if (!n || run(n, words)) {
			fprintf(stderr, "vmtc: bad command '%s'\n", argv[i]);
			printf("bad\n");
			free(s);
			return 2;
		}
		free(s);
	}
	return 0;
}
