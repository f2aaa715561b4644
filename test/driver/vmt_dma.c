// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio_mig_test: device DMA logging (vfio_log_ops) and real DMA through the
 * container (vfio_dma_rw), so that tests can compare the device's log, the
 * type1 IOMMU's dirty bitmap and the bytes that changed in user memory.
 *
 * The log: one bitmap per logged range at the negotiated page size. A write
 * of dma_write inside a logged range sets the pages it touched; a write
 * outside every range is done but not logged (the device logs only what it
 * was asked to). Logging survives VFIO_DEVICE_RESET (the pages did change)
 * and ends at stop or when the device is closed.
 */

#include <linux/module.h>
#include <linux/slab.h>
#include <linux/bitmap.h>
#include <linux/interval_tree.h>
#include <linux/iova_bitmap.h>
#include <linux/log2.h>
#include <linux/workqueue.h>
#include <linux/sched.h>
#include <linux/sysfs.h>
#include <linux/string.h>
#include <linux/ctype.h>

#include "vmt.h"

/*
 * iova_bitmap moved to iommufd (namespace IOMMUFD) in 6.9; without
 * CONFIG_IOMMUFD_DRIVER the kernel's report path is a stub that fails with
 * EOPNOTSUPP before any driver is asked (Debian's 6.12).
 */
#if IS_ENABLED(CONFIG_IOMMUFD_DRIVER) && LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 13, 0)
MODULE_IMPORT_NS("IOMMUFD");
#else
MODULE_IMPORT_NS(IOMMUFD);
#endif
#endif

#define VMT_LOG_PAGE_MIN	4096ULL
#define VMT_LOG_PAGE_MAX	(2ULL << 20)
/* bits of all logged ranges together: 2^26 pages, 8 MiB of bitmap */
#define VMT_LOG_MAX_BITS	BIT(26)
#define VMT_DMA_WRITE_MAX	BIT(20)

struct vmt_log_range {
	u64 iova;
	u64 length;
	unsigned long *bits;	/* length / page_size bits */
};

static void vmt_log_free(struct vmt_dev *d)
{
	u32 i;

	lockdep_assert_held(&d->lock);
	for (i = 0; i < d->log_nranges; i++) {
		bitmap_free(d->log_ranges[i].bits);
		atomic_long_dec(&vmt_live_allocs);
	}
	vmt_kfree(d->log_ranges);
	d->log_ranges = NULL;
	d->log_nranges = 0;
	d->log_active = false;
}

/* The page size the driver picks: the knob when set, else the hint clamped to what it can do. */
static u64 vmt_log_choose_page(struct vmt_dev *d, u64 hint)
{
	if (d->log_page_size)
		return d->log_page_size;
	if (hint < VMT_LOG_PAGE_MIN || !is_power_of_2(hint))
		return VMT_LOG_PAGE_MIN;
	return min_t(u64, hint, VMT_LOG_PAGE_MAX);
}

static int vmt_log_start(struct vfio_device *vdev, struct rb_root_cached *ranges,
			 u32 nnodes, u64 *page_size)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);
	struct interval_tree_node *node;
	unsigned long total = 0;
	u64 page;
	u32 i = 0;
	int ret = 0;

	mutex_lock(&d->lock);
	vmt_count(d, VMT_C_LOG_STARTS);
	if (d->log_active) {
		ret = -EBUSY;	/* a start needs the previous log stopped */
		goto out;
	}
	page = vmt_log_choose_page(d, *page_size);
	d->log_ranges = vmt_kzalloc(sizeof(*d->log_ranges) * nnodes);
	if (!d->log_ranges) {
		ret = -ENOMEM;
		goto out;
	}
	for (node = interval_tree_iter_first(ranges, 0, ULONG_MAX); node && i < nnodes;
	     node = interval_tree_iter_next(node, 0, ULONG_MAX), i++) {
		struct vmt_log_range *r = &d->log_ranges[i];
		u64 start = round_down(node->start, page);
		u64 end = round_up((u64)node->last + 1, page);
		unsigned long nbits = (end - start) / page;

		total += nbits;
		if (total > VMT_LOG_MAX_BITS) {
			ret = -E2BIG;
			break;
		}
		r->iova = start;
		r->length = end - start;
		r->bits = bitmap_zalloc(nbits, GFP_KERNEL_ACCOUNT);
		if (!r->bits) {
			ret = -ENOMEM;
			break;
		}
		atomic_long_inc(&vmt_live_allocs);
		d->log_nranges = i + 1;
	}
	if (ret) {
		vmt_log_free(d);
		goto out;
	}
	d->log_page = page;
	d->log_active = true;
	*page_size = page;
out:
	mutex_unlock(&d->lock);
	return ret;
}

static int vmt_log_stop(struct vfio_device *vdev)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);

	mutex_lock(&d->lock);
	vmt_count(d, VMT_C_LOG_STOPS);
	vmt_log_free(d);	/* stopping a stopped log is a no-op */
	mutex_unlock(&d->lock);
	return 0;
}

/* Is every byte of [iova, iova + length) inside a logged range? */
static bool vmt_log_covers(struct vmt_dev *d, u64 iova, u64 length)
{
	u64 at = iova, end = iova + length;
	u32 i;

	while (at < end) {
		for (i = 0; i < d->log_nranges; i++) {
			struct vmt_log_range *r = &d->log_ranges[i];

			if (at >= r->iova && at < r->iova + r->length) {
				at = r->iova + r->length;
				break;
			}
		}
		if (i == d->log_nranges)
			return false;
	}
	return true;
}

static int vmt_log_read_and_clear(struct vfio_device *vdev, unsigned long iova,
				  unsigned long length, struct iova_bitmap *dirty)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);
	u64 end = (u64)iova + length;
	int ret = 0;
	u32 i;

	mutex_lock(&d->lock);
	vmt_count(d, VMT_C_LOG_REPORTS);
	if (!d->log_active) {
		ret = -EINVAL;
		goto out;
	}
	if (!vmt_log_covers(d, iova, length)) {
		ret = -EINVAL;	/* only the logged ranges can be reported */
		goto out;
	}
	for (i = 0; i < d->log_nranges; i++) {
		struct vmt_log_range *r = &d->log_ranges[i];
		unsigned long nbits = r->length / d->log_page;
		unsigned long bit;

		for_each_set_bit(bit, r->bits, nbits) {
			u64 pstart = r->iova + bit * d->log_page;
			u64 pend = pstart + d->log_page;
			u64 s = max_t(u64, pstart, iova);
			u64 e = min_t(u64, pend, end);

			if (s >= e)
				continue;
			/* iova_bitmap_set does not clip: only [iova, end) may be passed */
			iova_bitmap_set(dirty, s, e - s);
			if (s == pstart && e == pend)
				clear_bit(bit, r->bits);
		}
	}
out:
	mutex_unlock(&d->lock);
	return ret;
}

const struct vfio_log_ops vmt_log_ops = {
	.log_start = vmt_log_start,
	.log_stop = vmt_log_stop,
	.log_read_and_clear = vmt_log_read_and_clear,
};

void vmt_log_close(struct vmt_dev *d)
{
	lockdep_assert_held(&d->lock);
	vmt_log_free(d);
}

/* Marks [iova, iova + len) in the log where it lies in a logged range. */
static void vmt_log_mark(struct vmt_dev *d, u64 iova, u64 len)
{
	u64 end = iova + len;
	u32 i;

	if (!d->log_active)
		return;
	for (i = 0; i < d->log_nranges; i++) {
		struct vmt_log_range *r = &d->log_ranges[i];
		u64 s = max_t(u64, iova, r->iova);
		u64 e = min_t(u64, end, r->iova + r->length);

		if (s >= e)
			continue;
		bitmap_set(r->bits, (s - r->iova) / d->log_page,
			   (e - 1 - r->iova) / d->log_page - (s - r->iova) / d->log_page + 1);
	}
}

/* --- dma_write: real DMA through the container -------------------------- */

struct vmt_dma_job {
	struct work_struct work;
	struct vmt_dev *d;
	const char *spec;
	int ret;
};

/* Parses "IOVA[:LEN[:BYTE]]" (numbers in any base kstrtou64 takes). */
static int vmt_parse_write(char *tok, u64 *iova, u32 *len, u8 *byte)
{
	char *len_s, *byte_s;
	int ret;

	len_s = strchr(tok, ':');
	if (len_s)
		*len_s++ = '\0';
	byte_s = len_s ? strchr(len_s, ':') : NULL;
	if (byte_s)
		*byte_s++ = '\0';
	ret = kstrtou64(tok, 0, iova);
	if (ret)
		return ret;
	*len = 1;
	*byte = 0xa5;
	if (len_s) {
		ret = kstrtou32(len_s, 0, len);
		if (ret)
			return ret;
	}
	if (byte_s) {
		ret = kstrtou8(byte_s, 0, byte);
		if (ret)
			return ret;
	}
	if (*len == 0 || *len > VMT_DMA_WRITE_MAX)
		return -EINVAL;
	return 0;
}

/*
 * Runs in a workqueue worker: vfio_dma_rw from a kernel thread adopts the
 * mm of the process that mapped the IOVA, whoever wrote the sysfs file.
 */
static void vmt_dma_work_fn(struct work_struct *work)
{
	struct vmt_dma_job *job = container_of(work, struct vmt_dma_job, work);
	struct vmt_dev *d = job->d;
	char *copy, *cur, *tok;
	u8 *buf = NULL;
	int ret = 0;

	copy = kstrdup(job->spec, GFP_KERNEL);
	if (!copy) {
		job->ret = -ENOMEM;
		return;
	}
	mutex_lock(&d->lock);
	if (!d->open) {
		ret = -ENODEV;	/* vfio_dma_rw needs the device open */
		goto out;
	}
	if (!vmt_dev_running(d)) {
		ret = -EBUSY;	/* a stopped device does no DMA */
		goto out;
	}
	cur = strim(copy);
	while ((tok = strsep(&cur, " \t\n,")) != NULL) {
		u64 iova;
		u32 len;
		u8 byte;

		if (!*tok)
			continue;
		ret = vmt_parse_write(tok, &iova, &len, &byte);
		if (ret)
			break;
		buf = kmalloc(len, GFP_KERNEL);
		if (!buf) {
			ret = -ENOMEM;
			break;
		}
		memset(buf, byte, len);
		ret = vfio_dma_rw(&d->vdev, iova, buf, len, true);
		kfree(buf);
		buf = NULL;
		if (ret)
			break;
		vmt_count(d, VMT_C_DMA_WRITES);
		vmt_count_add(d, VMT_C_DMA_BYTES, len);
		vmt_log_mark(d, iova, len);
	}
out:
	mutex_unlock(&d->lock);
	kfree(copy);
	job->ret = ret;
}

static ssize_t dma_write_store(struct device *dev, struct device_attribute *attr,
			       const char *buf, size_t count)
{
	struct vmt_dma_job job = { .d = dev_get_drvdata(dev), .spec = buf };

	INIT_WORK_ONSTACK(&job.work, vmt_dma_work_fn);
	queue_work(system_unbound_wq, &job.work);
	flush_work(&job.work);
	destroy_work_on_stack(&job.work);
	return job.ret ? job.ret : count;
}
DEVICE_ATTR_WO(dma_write);

/* "inactive", or "active PAGE_SIZE" then a line per logged dirty page (hex IOVA); never clears. */
static ssize_t dma_log_show(struct device *dev, struct device_attribute *attr,
			    char *buf)
{
	struct vmt_dev *d = dev_get_drvdata(dev);
	int n;
	u32 i;

	mutex_lock(&d->lock);
	if (!d->log_active) {
		n = sysfs_emit(buf, "inactive\n");
		goto out;
	}
	n = sysfs_emit(buf, "active %llu\n", d->log_page);
	for (i = 0; i < d->log_nranges; i++) {
		struct vmt_log_range *r = &d->log_ranges[i];
		unsigned long bit;

		for_each_set_bit(bit, r->bits, r->length / d->log_page) {
			if (n >= PAGE_SIZE - 24)
				goto out;
			n += sysfs_emit_at(buf, n, "0x%llx\n",
					   r->iova + bit * d->log_page);
		}
	}
out:
	mutex_unlock(&d->lock);
	return n;
}
DEVICE_ATTR_RO(dma_log);

/* 0: follow the page size asked for (4 KiB to 2 MiB); else the page size the driver always picks */
static ssize_t log_page_size_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	struct vmt_dev *d = dev_get_drvdata(dev);
	u64 v;

	mutex_lock(&d->lock);
	v = d->log_page_size;
	mutex_unlock(&d->lock);
	return sysfs_emit(buf, "%llu\n", v);
}

static ssize_t log_page_size_store(struct device *dev,
				   struct device_attribute *attr,
				   const char *buf, size_t count)
{
	struct vmt_dev *d = dev_get_drvdata(dev);
	u64 v;
	int ret;

	ret = kstrtou64(buf, 0, &v);
	if (ret)
		return ret;
	if (v && (!is_power_of_2(v) || v < VMT_LOG_PAGE_MIN || v > VMT_LOG_PAGE_MAX))
		return -EINVAL;
	mutex_lock(&d->lock);
	d->log_page_size = v;
	mutex_unlock(&d->lock);
	return count;
}
DEVICE_ATTR_RW(log_page_size);
