// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio_mig_test: the v1 migration region (VFIO_REGION_TYPE_MIGRATION_DEPRECATED,
 * subtype 1) at region index 9: a trapped struct vfio_device_migration_info
 * in the first page and a data section of chunk_size bytes at data_offset.
 */

#include <linux/module.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/vmalloc.h>
#include <linux/uaccess.h>

#include "vmt.h"

#define V1_STOP		0
#define V1_RUNNING	VFIO_DEVICE_STATE_V1_RUNNING
#define V1_SAVING	VFIO_DEVICE_STATE_V1_SAVING
#define V1_PRECOPY	(VFIO_DEVICE_STATE_V1_SAVING | VFIO_DEVICE_STATE_V1_RUNNING)
#define V1_RESUMING	VFIO_DEVICE_STATE_V1_RESUMING
#define V1_MASK		VFIO_DEVICE_STATE_MASK

#define V1_OFF_DEVICE_STATE	offsetof(struct vfio_device_migration_info, device_state)
#define V1_OFF_RESERVED		offsetof(struct vfio_device_migration_info, reserved)
#define V1_OFF_PENDING_BYTES	offsetof(struct vfio_device_migration_info, pending_bytes)
#define V1_OFF_DATA_OFFSET	offsetof(struct vfio_device_migration_info, data_offset)
#define V1_OFF_DATA_SIZE	offsetof(struct vfio_device_migration_info, data_size)

/* The legal transitions, each one a fault point. */
static const struct {
	u8 from, to;
	enum vmt_fault_point fp;
} vmt_v1_arcs[] = {
	{ V1_RUNNING, V1_STOP, VMT_F_V1_T_RUNNING_STOP },
	{ V1_RUNNING, V1_SAVING, VMT_F_V1_T_RUNNING_SAVING },
	{ V1_RUNNING, V1_PRECOPY, VMT_F_V1_T_RUNNING_PRECOPY },
	{ V1_RUNNING, V1_RESUMING, VMT_F_V1_T_RUNNING_RESUMING },
	{ V1_STOP, V1_RUNNING, VMT_F_V1_T_STOP_RUNNING },
	{ V1_STOP, V1_SAVING, VMT_F_V1_T_STOP_SAVING },
	{ V1_STOP, V1_RESUMING, VMT_F_V1_T_STOP_RESUMING },
	{ V1_PRECOPY, V1_SAVING, VMT_F_V1_T_PRECOPY_SAVING },
	{ V1_PRECOPY, V1_RUNNING, VMT_F_V1_T_PRECOPY_RUNNING },
	{ V1_SAVING, V1_STOP, VMT_F_V1_T_SAVING_STOP },
	{ V1_SAVING, V1_RUNNING, VMT_F_V1_T_SAVING_RUNNING },
	{ V1_RESUMING, V1_RUNNING, VMT_F_V1_T_RESUMING_RUNNING },
	{ V1_RESUMING, V1_STOP, VMT_F_V1_T_RESUMING_STOP },
};

static bool vmt_v1_is_error(struct vmt_dev *d)
{
	return VFIO_DEVICE_STATE_IS_ERROR(d->v1_state);
}

bool vmt_v1_running(struct vmt_dev *d)
{
	return !vmt_v1_is_error(d) && (d->v1_state & V1_RUNNING);
}

static void vmt_v1_end_sessions(struct vmt_dev *d)
{
	vmt_save_end(d);
	vmt_load_end(d);
	d->v1_staged = false;
	d->v1_staged_len = 0;
	d->v1_data_size = 0;
}

void vmt_v1_reset(struct vmt_dev *d)
{
	lockdep_assert_held(&d->lock);
	vmt_v1_end_sessions(d);
	d->v1_state = d->v1_reserved | V1_RUNNING;
}

void vmt_v1_enter_error(struct vmt_dev *d)
{
	lockdep_assert_held(&d->lock);
	vmt_v1_end_sessions(d);
	d->v1_state = VFIO_DEVICE_STATE_SET_ERROR(d->v1_state);
}

int vmt_v1_open(struct vmt_dev *d)
{
	lockdep_assert_held(&d->lock);
	d->v1_buf = vmalloc_user(d->chunk_size);
	if (!d->v1_buf)
		return -ENOMEM;
	atomic_long_inc(&vmt_live_allocs);
	d->v1_buf_size = d->chunk_size;
	vmt_v1_reset(d);
	return 0;
}

void vmt_v1_close(struct vmt_dev *d)
{
	lockdep_assert_held(&d->lock);
	vmt_v1_end_sessions(d);
	if (d->v1_buf) {
		vfree(d->v1_buf);
		atomic_long_dec(&vmt_live_allocs);
		d->v1_buf = NULL;
	}
}

static int vmt_v1_transition(struct vmt_dev *d, u32 from, u32 to)
{
	int ret;

	switch (from << 4 | to) {
	case V1_RUNNING << 4 | V1_STOP:
	case V1_STOP << 4 | V1_RUNNING:
		return 0;
	case V1_RUNNING << 4 | V1_SAVING:
	case V1_STOP << 4 | V1_SAVING:
	case V1_RUNNING << 4 | V1_PRECOPY:
		ret = vmt_save_start(d, to == V1_SAVING, 0);
		d->v1_staged = false;
		return ret;
	case V1_PRECOPY << 4 | V1_SAVING:
		/* the device stops; a buffer handed out stays until consumed */
		d->save->stopped = true;
		return 0;
	case V1_PRECOPY << 4 | V1_RUNNING:
	case V1_SAVING << 4 | V1_STOP:
	case V1_SAVING << 4 | V1_RUNNING:
		vmt_v1_end_sessions(d);
		return 0;
	case V1_RUNNING << 4 | V1_RESUMING:
	case V1_STOP << 4 | V1_RESUMING:
		vmt_load_start(d, 0);
		d->v1_data_size = 0;
		return 0;
	case V1_RESUMING << 4 | V1_RUNNING:
	case V1_RESUMING << 4 | V1_STOP:
		/* a stream that was started must have been completed */
		if (d->load.seq && !d->load.done)
			return -EINVAL;
		vmt_v1_end_sessions(d);
		return 0;
	}
	return -EINVAL;
}

static int vmt_v1_write_state(struct vmt_dev *d, u32 val)
{
	u32 cur = d->v1_state, from = cur & V1_MASK, to = val & V1_MASK;
	bool err = false;
	unsigned int i;
	int ret;

	ret = vmt_fault(d, VMT_F_V1_WR_DEVICE_STATE, &err);
	if (ret)
		goto out;
	/* only VFIO_DEVICE_RESET leaves the error state */
	if (vmt_v1_is_error(d))
		return -EINVAL;
	/* bits 3-31 must be written back as read (read-modify-write) */
	if ((val & ~V1_MASK) != (cur & ~V1_MASK))
		return -EINVAL;
	if (!VFIO_DEVICE_STATE_VALID(val) && vmt_bug(d, VMT_B_V1_INVALID_STATE)) {
		d->v1_state = (cur & ~V1_MASK) | to;
		return 0;
	}
	if (!VFIO_DEVICE_STATE_VALID(val) || VFIO_DEVICE_STATE_IS_ERROR(val))
		return -EINVAL;
	if (from == to)
		return 0;

	for (i = 0; i < ARRAY_SIZE(vmt_v1_arcs); i++)
		if (vmt_v1_arcs[i].from == from && vmt_v1_arcs[i].to == to)
			break;
	if (i == ARRAY_SIZE(vmt_v1_arcs))
		return -EINVAL;

	ret = vmt_fault(d, vmt_v1_arcs[i].fp, &err);
	if (!ret)
		ret = vmt_v1_transition(d, from, to);
	if (!ret) {
		d->v1_state = (cur & ~V1_MASK) | to;
		if (vmt_bug(d, VMT_B_V1_RESERVED_LOST))
			d->v1_state = to;
		vmt_count(d, VMT_C_V1_TRANSITIONS);
		return 0;
	}
out:
	vmt_count(d, VMT_C_V1_TRANSITIONS_FAILED);
	if (err)
		vmt_enter_error(d);
	return ret;
}

static int vmt_v1_read_reg(struct vmt_dev *d, u64 off, u64 *val, bool *err)
{
	int ret;

	switch (off) {
	case V1_OFF_DEVICE_STATE:
		vmt_count(d, VMT_C_V1_RD_DEVICE_STATE);
		ret = vmt_fault(d, VMT_F_V1_RD_DEVICE_STATE, err);
		*val = d->v1_state;
		return ret;
	case V1_OFF_RESERVED:
		vmt_count(d, VMT_C_V1_RD_RESERVED);
		*val = 0;
		return vmt_fault(d, VMT_F_V1_RD_RESERVED, err);
	case V1_OFF_PENDING_BYTES:
		vmt_count(d, VMT_C_V1_RD_PENDING_BYTES);
		ret = vmt_fault(d, VMT_F_V1_RD_PENDING_BYTES, err);
		if (ret)
			return ret;
		if (vmt_v1_is_error(d))
			return -EIO;
		/* step a/f: the buffer handed out before has been consumed */
		d->v1_staged = false;
		*val = vmt_save_pending(d);
		if (*val && vmt_bug(d, VMT_B_V1_PENDING_REREAD))
			*val += ++d->bug_tick;
		return 0;
	case V1_OFF_DATA_OFFSET:
		vmt_count(d, VMT_C_V1_RD_DATA_OFFSET);
		ret = vmt_fault(d, VMT_F_V1_RD_DATA_OFFSET, err);
		if (ret)
			return ret;
		if (vmt_v1_is_error(d))
			return -EIO;
		/* step b: make the next buffer available, once per iteration */
		if (d->save && !d->v1_staged) {
			ssize_t len = vmt_save_build(d, d->v1_buf, d->v1_buf_size,
						     NULL);

			if (len < 0) {
				*err = true;
				return len;
			}
			d->v1_staged = true;
			d->v1_staged_len = len;
		}
		*val = VMT_MIG_DATA_OFFSET;
		if (vmt_bug(d, VMT_B_V1_DATA_OFFSET_OUTSIDE))
			*val += d->v1_buf_size;
		return 0;
	case V1_OFF_DATA_SIZE:
		vmt_count(d, VMT_C_V1_RD_DATA_SIZE);
		ret = vmt_fault(d, VMT_F_V1_RD_DATA_SIZE, err);
		if (ret)
			return ret;
		if (vmt_v1_is_error(d))
			return -EIO;
		if (d->save)
			*val = d->v1_staged ? d->v1_staged_len : 0;
		else if (d->load.active)
			*val = d->v1_data_size;
		else
			*val = 0;
		return 0;
	}
	return -EINVAL;
}

static int vmt_v1_write_data_size(struct vmt_dev *d, u64 val, bool *err)
{
	u8 *copy;
	int ret;

	vmt_count(d, VMT_C_V1_WR_DATA_SIZE);
	ret = vmt_fault(d, VMT_F_V1_WR_DATA_SIZE, err);
	if (ret)
		return ret;
	if (vmt_v1_is_error(d))
		return -EIO;
	if (!d->load.active || !val || val > d->v1_buf_size)
		return -EINVAL;

	/* step c: consume the buffer; the user may not change it meanwhile */
	copy = kvmalloc(val, GFP_KERNEL_ACCOUNT);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, d->v1_buf, val);
	ret = vmt_load_record(d, copy, val);
	kvfree(copy);
	if (ret) {
		/* the resume state is now inconsistent: internal error */
		*err = true;
		return ret;
	}
	d->v1_data_size = val;
	return 0;
}

static ssize_t vmt_v1_header_rw(struct vmt_dev *d, char __user *buf,
				size_t count, u64 off, bool write)
{
	size_t width;
	bool err = false;
	u64 val = 0;
	int ret;

	switch (off) {
	case V1_OFF_DEVICE_STATE:
	case V1_OFF_RESERVED:
		width = 4;
		break;
	case V1_OFF_PENDING_BYTES:
	case V1_OFF_DATA_OFFSET:
	case V1_OFF_DATA_SIZE:
		width = 8;
		break;
	default:
		width = 0;
	}
	/* native width and alignment only */
	if (!width || count != width) {
		vmt_count(d, VMT_C_BAD_ACCESSES);
		return -EINVAL;
	}

	if (!write) {
		ret = vmt_v1_read_reg(d, off, &val, &err);
		if (!ret && copy_to_user(buf, &val, width))
			ret = -EFAULT;
		goto out;
	}

	if (copy_from_user(&val, buf, width))
		return -EFAULT;
	switch (off) {
	case V1_OFF_DEVICE_STATE:
		vmt_count(d, VMT_C_V1_WR_DEVICE_STATE);
		ret = vmt_v1_write_state(d, (u32)val);
		break;
	case V1_OFF_RESERVED:
		/* writes are ignored */
		vmt_count(d, VMT_C_V1_WR_RESERVED);
		ret = vmt_fault(d, VMT_F_V1_WR_RESERVED, &err);
		break;
	case V1_OFF_DATA_SIZE:
		ret = vmt_v1_write_data_size(d, val, &err);
		break;
	default:
		/* pending_bytes and data_offset are read-only */
		vmt_count(d, VMT_C_BAD_ACCESSES);
		ret = -EINVAL;
	}
out:
	if (err)
		vmt_enter_error(d);
	return ret ? ret : width;
}

static ssize_t vmt_v1_data_rw(struct vmt_dev *d, char __user *buf,
			      size_t count, u64 off, bool write)
{
	bool err = false;
	u64 end;
	int ret;

	off -= VMT_MIG_DATA_OFFSET;
	if (check_add_overflow(off, (u64)count, &end) || end > d->v1_buf_size) {
		vmt_count(d, VMT_C_BAD_ACCESSES);
		return -EINVAL;
	}
	vmt_count(d, write ? VMT_C_V1_WR_DATA : VMT_C_V1_RD_DATA);
	ret = vmt_fault(d, write ? VMT_F_V1_WR_DATA : VMT_F_V1_RD_DATA, &err);
	if (ret)
		goto out;
	if (vmt_v1_is_error(d)) {
		ret = -EIO;
		goto out;
	}
	if (write) {
		if (!d->load.active) {
			ret = -EINVAL;
			goto out;
		}
		if (copy_from_user(d->v1_buf + off, buf, count))
			ret = -EFAULT;
		else
			vmt_count_add(d, VMT_C_V1_DATA_BYTES_WRITTEN, count);
	} else {
		if (copy_to_user(buf, d->v1_buf + off, count))
			ret = -EFAULT;
		else
			vmt_count_add(d, VMT_C_V1_DATA_BYTES_READ, count);
	}
out:
	if (err)
		vmt_enter_error(d);
	return ret ? ret : count;
}

/* Called with d->lock held, off relative to the region start. */
ssize_t vmt_v1_rw(struct vmt_dev *d, char __user *buf, size_t count, u64 off,
		  bool write)
{
	lockdep_assert_held(&d->lock);
	if (!d->v1_buf)
		return -ENODEV;
	if (off >= VMT_MIG_DATA_OFFSET)
		return vmt_v1_data_rw(d, buf, count, off, write);
	return vmt_v1_header_rw(d, buf, count, off, write);
}

/*
 * Runs under mmap_lock: it must not take d->lock (reads and writes copy to
 * and from user memory under d->lock). v1_buf is stable while the fd is open.
 */
int vmt_v1_mmap(struct vmt_dev *d, struct vm_area_struct *vma, u64 off)
{
	unsigned long size = vma->vm_end - vma->vm_start;
	bool err = false;
	u64 end;
	int ret;

	if (d->kind != VMT_KIND_V1 || !d->v1_buf)
		return -EINVAL;
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	if (off < VMT_MIG_DATA_OFFSET || !PAGE_ALIGNED(off) ||
	    check_add_overflow(off - VMT_MIG_DATA_OFFSET, (u64)size, &end) ||
	    end > d->v1_buf_size)
		return -EINVAL;
	ret = vmt_fault(d, VMT_F_V1_MMAP, &err);
	if (ret)
		return ret;
	ret = remap_vmalloc_range(vma, d->v1_buf,
				  (off - VMT_MIG_DATA_OFFSET) >> PAGE_SHIFT);
	if (!ret)
		vmt_count(d, VMT_C_V1_MMAPS);
	return ret;
}

int vmt_v1_region_info(struct vmt_dev *d, struct vfio_region_info *info,
		       struct vfio_info_cap *caps)
{
	struct vfio_region_info_cap_type cap_type = {
		.header.id = VFIO_REGION_INFO_CAP_TYPE,
		.header.version = 1,
		.type = VFIO_REGION_TYPE_MIGRATION_DEPRECATED,
		.subtype = VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED,
	};
	struct vfio_region_info_cap_sparse_mmap *sparse;
	size_t sparse_size;
	int ret;

	lockdep_assert_held(&d->lock);
	info->size = VMT_MIG_DATA_OFFSET + d->chunk_size;
	info->flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;

	ret = vfio_info_add_capability(caps, &cap_type.header, sizeof(cap_type));
	if (ret || d->kind != VMT_KIND_V1)
		return ret;

	/* the data section, and only it, can be mapped */
	info->flags |= VFIO_REGION_INFO_FLAG_MMAP;
	sparse_size = struct_size(sparse, areas, 1);
	sparse = kzalloc(sparse_size, GFP_KERNEL);
	if (!sparse)
		return -ENOMEM;
	sparse->header.id = VFIO_REGION_INFO_CAP_SPARSE_MMAP;
	sparse->header.version = 1;
	sparse->nr_areas = 1;
	sparse->areas[0].offset = VMT_MIG_DATA_OFFSET;
	sparse->areas[0].size = d->chunk_size;
	ret = vfio_info_add_capability(caps, &sparse->header, sparse_size);
	kfree(sparse);
	return ret;
}
