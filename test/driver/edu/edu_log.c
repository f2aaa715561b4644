// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio_mig_edu: device DMA logging (vfio_log_ops). BAR0 is trapped, so the
 * driver sees every DMA command the user starts; one towards RAM marks the
 * pages it will write, where they lie in a logged range.
 */

#include <linux/interval_tree.h>
#include <linux/iova_bitmap.h>
#include <linux/slab.h>
#include <linux/xarray.h>

#include "edu.h"

struct edu_log_range {
	u64 start, end;		/* [start, end), page-aligned */
};

static void edu_log_free(struct edu_dev *e)
{
	lockdep_assert_held(&e->state_mutex);
	kfree(e->log_ranges);
	e->log_ranges = NULL;
	e->log_nranges = 0;
	e->log_active = false;
	e->log_overflow = false;
	xa_destroy(&e->log_dirty);
}

static int edu_log_start(struct vfio_device *vdev,
			 struct rb_root_cached *ranges, u32 nnodes,
			 u64 *page_size)
{
	struct edu_dev *e = container_of(vdev, struct edu_dev, core.vdev);
	struct interval_tree_node *node;
	u32 i = 0;
	int ret = 0;

	mutex_lock(&e->state_mutex);
	if (e->log_active) {
		ret = -EBUSY;	/* a start needs the previous log stopped */
		goto out;
	}
	e->log_ranges = kcalloc(nnodes, sizeof(*e->log_ranges), GFP_KERNEL);
	if (!e->log_ranges) {
		ret = -ENOMEM;
		goto out;
	}
	for (node = interval_tree_iter_first(ranges, 0, ULONG_MAX);
	     node && i < nnodes;
	     node = interval_tree_iter_next(node, 0, ULONG_MAX), i++) {
		e->log_ranges[i].start = round_down(node->start, PAGE_SIZE);
		e->log_ranges[i].end = round_up((u64)node->last + 1, PAGE_SIZE);
	}
	e->log_nranges = i;
	e->log_active = true;
	*page_size = PAGE_SIZE;
out:
	mutex_unlock(&e->state_mutex);
	return ret;
}

static int edu_log_stop(struct vfio_device *vdev)
{
	struct edu_dev *e = container_of(vdev, struct edu_dev, core.vdev);

	mutex_lock(&e->state_mutex);
	edu_log_free(e);	/* stopping a stopped log is a no-op */
	mutex_unlock(&e->state_mutex);
	return 0;
}

/* Is every byte of [iova, end) inside a logged range? */
static bool edu_log_covers(struct edu_dev *e, u64 iova, u64 end)
{
	u32 i;

	while (iova < end) {
		for (i = 0; i < e->log_nranges; i++) {
			if (iova >= e->log_ranges[i].start &&
			    iova < e->log_ranges[i].end) {
				iova = e->log_ranges[i].end;
				break;
			}
		}
		if (i == e->log_nranges)
			return false;
	}
	return true;
}

static int edu_log_read_and_clear(struct vfio_device *vdev, unsigned long iova,
				  unsigned long length,
				  struct iova_bitmap *dirty)
{
	struct edu_dev *e = container_of(vdev, struct edu_dev, core.vdev);
	u64 end = (u64)iova + length;
	unsigned long index;
	void *entry;
	int ret = 0;

	mutex_lock(&e->state_mutex);
	if (!e->log_active || !length || !edu_log_covers(e, iova, end)) {
		ret = -EINVAL;
		goto out;
	}
	if (e->log_overflow)
		iova_bitmap_set(dirty, iova, length);
	xa_for_each_range(&e->log_dirty, index, entry, iova >> PAGE_SHIFT,
			  (end - 1) >> PAGE_SHIFT) {
		iova_bitmap_set(dirty, (u64)index << PAGE_SHIFT, PAGE_SIZE);
		xa_erase(&e->log_dirty, index);
	}
out:
	mutex_unlock(&e->state_mutex);
	return ret;
}

const struct vfio_log_ops edu_log_ops = {
	.log_start = edu_log_start,
	.log_stop = edu_log_stop,
	.log_read_and_clear = edu_log_read_and_clear,
};

void edu_log_close(struct edu_dev *e)
{
	edu_log_free(e);
}

/* The device is about to write [iova, iova + len) by DMA. */
void edu_log_mark(struct edu_dev *e, u64 iova, u64 len)
{
	u64 page, end = iova + len;

	lockdep_assert_held(&e->state_mutex);
	if (!e->log_active || !len)
		return;
	for (page = round_down(iova, PAGE_SIZE); page < end; page += PAGE_SIZE) {
		if (!edu_log_covers(e, page, page + 1))
			continue;
		/* no memory: from now on every report says all dirty */
		if (xa_err(xa_store(&e->log_dirty, page >> PAGE_SHIFT,
				    xa_mk_value(1), GFP_KERNEL)))
			e->log_overflow = true;
	}
}
