// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio_mig_test: mdev parent, device types, the PCI look (config space, BAR0,
 * INTx), the vfio_device_ops, per-instance sysfs knobs and fault injection.
 *
 * Structure after samples/vfio-mdev/mtty.c. Built out of tree against 6.1
 * and 6.12; see README.md for the user-visible contract.
 */

#include <linux/init.h>
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/device.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/vmalloc.h>
#include <linux/uaccess.h>
#include <linux/eventfd.h>
#include <linux/pci_regs.h>
#include <linux/sysfs.h>
#include <linux/string.h>
#include <linux/ctype.h>
#include <linux/version.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
#include <linux/unaligned.h>
#else
#include <asm/unaligned.h>
#endif

#include "vmt.h"

/* --- allocation accounting ------------------------------------------ */

atomic_long_t vmt_live_allocs = ATOMIC_LONG_INIT(0);

void *vmt_kzalloc(size_t size)
{
	void *p = kzalloc(size, GFP_KERNEL_ACCOUNT | __GFP_NOWARN);

	if (p)
		atomic_long_inc(&vmt_live_allocs);
	return p;
}

void vmt_kfree(const void *p)
{
	if (!p)
		return;
	kfree(p);
	atomic_long_dec(&vmt_live_allocs);
}

void *vmt_kvzalloc(size_t size)
{
	void *p = kvzalloc(size, GFP_KERNEL_ACCOUNT | __GFP_NOWARN);

	if (p)
		atomic_long_inc(&vmt_live_allocs);
	return p;
}

void vmt_kvfree(const void *p)
{
	if (!p)
		return;
	kvfree(p);
	atomic_long_dec(&vmt_live_allocs);
}

static int vmt_live_allocs_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%ld\n", atomic_long_read(&vmt_live_allocs));
}

static const struct kernel_param_ops vmt_live_allocs_ops = {
	.get = vmt_live_allocs_get,
};
module_param_cb(live_allocs, &vmt_live_allocs_ops, NULL, 0444);
MODULE_PARM_DESC(live_allocs,
		 "Objects the driver has allocated and not freed (instances, pages, buffers, files)");

/* --- types and global state ----------------------------------------- */

static struct vmt_type {
	struct mdev_type type;
	enum vmt_kind kind;
} vmt_types[VMT_KIND_NR] = {
	[VMT_KIND_V1] = { .kind = VMT_KIND_V1, .type.sysfs_name = "v1",
		.type.pretty_name = "v1 migration region, mmap-able data section" },
	[VMT_KIND_V1_TRAPPED] = { .kind = VMT_KIND_V1_TRAPPED,
		.type.sysfs_name = "v1-trapped",
		.type.pretty_name = "v1 migration region, trapped data section" },
	[VMT_KIND_V2] = { .kind = VMT_KIND_V2, .type.sysfs_name = "v2",
		.type.pretty_name = "v2 migration (vfio_migration_ops, data fd)" },
	[VMT_KIND_NONE] = { .kind = VMT_KIND_NONE, .type.sysfs_name = "none",
		.type.pretty_name = "no migration" },
};

static struct mdev_type *vmt_mdev_types[] = {
	&vmt_types[VMT_KIND_V1].type,
	&vmt_types[VMT_KIND_V1_TRAPPED].type,
	&vmt_types[VMT_KIND_V2].type,
	&vmt_types[VMT_KIND_NONE].type,
};

static atomic_t vmt_avail = ATOMIC_INIT(VMT_MAX_INSTANCES);
static struct class *vmt_class;
static struct device vmt_parent_dev;
static struct mdev_parent vmt_parent;
static const struct vfio_device_ops vmt_dev_ops;

/* --- fault injection ------------------------------------------------ */

#define VMT_FDESC(id, name, flags) \
	[VMT_F_##id] = { name, flags },
const struct vmt_fault_desc vmt_fault_descs[VMT_F_NR] = { VMT_FAULTS(VMT_FDESC) };
#undef VMT_FDESC

#define VMT_BDESC(id, name, flags) \
	[VMT_B_##id] = { name, flags },
const struct vmt_fault_desc vmt_bug_descs[VMT_B_NR] = { VMT_BUGS(VMT_BDESC) };
#undef VMT_BDESC

#define VMT_CNAME(id, name) \
	[VMT_C_##id] = name,
static const char *const vmt_counter_names[VMT_C_NR] = { VMT_COUNTERS(VMT_CNAME) };
#undef VMT_CNAME

static const struct {
	const char *name;
	int err;
} vmt_errnos[] = {
	{ "EPERM", EPERM }, { "ENOENT", ENOENT }, { "EINTR", EINTR },
	{ "EIO", EIO }, { "ENXIO", ENXIO }, { "E2BIG", E2BIG },
	{ "EBADF", EBADF }, { "EAGAIN", EAGAIN }, { "ENOMEM", ENOMEM },
	{ "EACCES", EACCES }, { "EFAULT", EFAULT }, { "EBUSY", EBUSY },
	{ "EEXIST", EEXIST }, { "ENODEV", ENODEV }, { "EINVAL", EINVAL },
	{ "ENOSPC", ENOSPC }, { "ENOTTY", ENOTTY }, { "ERANGE", ERANGE },
	{ "ENOMSG", ENOMSG }, { "EPROTO", EPROTO }, { "EBADMSG", EBADMSG },
	{ "EOVERFLOW", EOVERFLOW }, { "EOPNOTSUPP", EOPNOTSUPP },
	{ "ETIMEDOUT", ETIMEDOUT }, { "ECANCELED", ECANCELED },
	{ "EHWPOISON", EHWPOISON },
};

bool vmt_fault_applies(struct vmt_dev *d, enum vmt_fault_point fp)
{
	unsigned int f = vmt_fault_descs[fp].flags;

	if ((f & VMT_FP_PC) && !VMT_HAVE_PRECOPY)
		return false;
	if (fp == VMT_F_V1_MMAP && d->kind != VMT_KIND_V1)
		return false;
	if (vmt_kind_is_v1(d->kind))
		return f & VMT_FP_V1;
	if (d->kind == VMT_KIND_V2)
		return f & VMT_FP_V2;
	return false;
}

/*
 * Fires the armed fault if it is fp: returns its -errno once and tells the
 * caller whether the device must enter the error state. Safe under mmap_lock.
 */
int vmt_fault(struct vmt_dev *d, enum vmt_fault_point fp, bool *enter_error)
{
	int ret = 0;

	spin_lock(&d->fault_lock);
	if (d->fault_point == fp) {
		ret = -d->fault_errno;
		if (d->fault_error)
			*enter_error = true;
		d->fault_point = -1;
	}
	spin_unlock(&d->fault_lock);
	if (ret)
		vmt_count(d, VMT_C_FAULTS_FIRED);
	return ret;
}

void vmt_enter_error(struct vmt_dev *d)
{
	lockdep_assert_held(&d->lock);
	vmt_count(d, VMT_C_ERRORS_ENTERED);
	if (vmt_kind_is_v1(d->kind))
		vmt_v1_enter_error(d);
	else if (d->kind == VMT_KIND_V2)
		vmt_v2_enter_error(d);
}

/* --- PCI config space ------------------------------------------------- */

static void vmt_config_init(struct vmt_dev *d)
{
	u8 *c = d->config, *w = d->config_wmask;
	u16 devid = VMT_PCI_DEVICE_BASE + d->kind;

	memset(c, 0, VMT_CONFIG_SIZE);
	memset(w, 0, VMT_CONFIG_SIZE);
	put_unaligned_le16(VMT_PCI_VENDOR, c + PCI_VENDOR_ID);
	put_unaligned_le16(devid, c + PCI_DEVICE_ID);
	c[PCI_REVISION_ID] = 1;
	c[PCI_CLASS_PROG] = 0;
	put_unaligned_le16(0xff00, c + PCI_CLASS_DEVICE);	/* unclassified */
	c[PCI_HEADER_TYPE] = PCI_HEADER_TYPE_NORMAL;
	/* BAR0: 32-bit non-prefetchable memory, VMT_BAR0_SIZE */
	put_unaligned_le32(PCI_BASE_ADDRESS_SPACE_MEMORY, c + PCI_BASE_ADDRESS_0);
	put_unaligned_le16(VMT_PCI_VENDOR, c + PCI_SUBSYSTEM_VENDOR_ID);
	put_unaligned_le16(devid, c + PCI_SUBSYSTEM_ID);
	c[PCI_INTERRUPT_PIN] = 1;	/* INTA# */

	put_unaligned_le16(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER |
			   PCI_COMMAND_INTX_DISABLE, w + PCI_COMMAND);
	w[PCI_CACHE_LINE_SIZE] = 0xff;
	w[PCI_LATENCY_TIMER] = 0xff;
	put_unaligned_le32(~(VMT_BAR0_SIZE - 1), w + PCI_BASE_ADDRESS_0);
	w[PCI_INTERRUPT_LINE] = 0xff;
}

static ssize_t vmt_config_rw(struct vmt_dev *d, char __user *buf, size_t count,
			     u64 off, bool write)
{
	u8 tmp[VMT_CONFIG_SIZE];
	size_t i;

	if (off >= VMT_CONFIG_SIZE || count > VMT_CONFIG_SIZE - off)
		return -EINVAL;
	if (!write) {
		vmt_count(d, VMT_C_CONFIG_READS);
		if (copy_to_user(buf, d->config + off, count))
			return -EFAULT;
		return count;
	}
	vmt_count(d, VMT_C_CONFIG_WRITES);
	if (copy_from_user(tmp, buf, count))
		return -EFAULT;
	for (i = 0; i < count; i++) {
		u8 m = d->config_wmask[off + i];

		d->config[off + i] = (d->config[off + i] & ~m) | (tmp[i] & m);
	}
	return count;
}

/* --- BAR0 registers --------------------------------------------------- */

static ssize_t vmt_bar0_rw(struct vmt_dev *d, char __user *buf, size_t count,
			   u64 off, bool write)
{
	size_t width = 0;
	u64 val = 0;
	int ret;

	if (off >= VMT_BAR0_SIZE || count > VMT_BAR0_SIZE - off ||
	    (count != 4 && count != 8) || (off % count))
		goto bad;
	switch (off) {
	case VMT_BAR0_MAGIC:
	case VMT_BAR0_VERSION:
		width = 4;
		break;
	case VMT_BAR0_STATE_SIZE:
	case VMT_BAR0_CHECKSUM:
	case VMT_BAR0_GENERATION:
	case VMT_BAR0_MUTATE:
		width = 8;
		break;
	}
	if (width && count != width)
		goto bad;

	if (!write) {
		vmt_count(d, VMT_C_BAR0_READS);
		switch (off) {
		case VMT_BAR0_MAGIC:
			val = VMT_MAGIC;
			break;
		case VMT_BAR0_VERSION:
			val = VMT_VERSION;
			break;
		case VMT_BAR0_STATE_SIZE:
			val = d->state_size;
			break;
		case VMT_BAR0_CHECKSUM:
			val = vmt_state_checksum(d);
			break;
		case VMT_BAR0_GENERATION:
			val = d->generation;
			break;
		}
		val = cpu_to_le64(val);
		if (copy_to_user(buf, &val, count))
			return -EFAULT;
		return count;
	}

	vmt_count(d, VMT_C_BAR0_WRITES);
	if (copy_from_user(&val, buf, count))
		return -EFAULT;
	/* writes to read-only and unassigned registers are ignored */
	if (off == VMT_BAR0_MUTATE) {
		ret = vmt_state_mutate(d, le64_to_cpu(val));
		if (ret)
			return ret;
	}
	return count;
bad:
	vmt_count(d, VMT_C_BAD_ACCESSES);
	return -EINVAL;
}

/* --- vfio_device_ops -------------------------------------------------- */

static int vmt_num_regions(struct vmt_dev *d)
{
	return vmt_kind_is_v1(d->kind) ? VMT_MIG_REGION_INDEX + 1 :
					 VFIO_PCI_NUM_REGIONS;
}

static ssize_t vmt_rw(struct vfio_device *vdev, char __user *buf, size_t count,
		      loff_t *ppos, bool write)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);
	loff_t pos = *ppos;
	u64 index, off;
	ssize_t ret;

	if (pos < 0)
		return -EINVAL;
	if (!count)
		return 0;
	index = (u64)pos >> VMT_OFFSET_SHIFT;
	off = (u64)pos & VMT_OFFSET_MASK;

	mutex_lock(&d->lock);
	switch (index) {
	case VFIO_PCI_CONFIG_REGION_INDEX:
		ret = vmt_config_rw(d, buf, count, off, write);
		break;
	case VFIO_PCI_BAR0_REGION_INDEX:
		ret = vmt_bar0_rw(d, buf, count, off, write);
		break;
	case VMT_MIG_REGION_INDEX:
		if (vmt_kind_is_v1(d->kind)) {
			ret = vmt_v1_rw(d, buf, count, off, write);
			break;
		}
		fallthrough;
	default:
		vmt_count(d, VMT_C_BAD_ACCESSES);
		ret = -EINVAL;
	}
	mutex_unlock(&d->lock);
	if (ret > 0)
		*ppos += ret;
	return ret;
}

static ssize_t vmt_read(struct vfio_device *vdev, char __user *buf,
			size_t count, loff_t *ppos)
{
	return vmt_rw(vdev, buf, count, ppos, false);
}

static ssize_t vmt_write(struct vfio_device *vdev, const char __user *buf,
			 size_t count, loff_t *ppos)
{
	return vmt_rw(vdev, (char __user *)buf, count, ppos, true);
}

static int vmt_mmap(struct vfio_device *vdev, struct vm_area_struct *vma)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);
	unsigned long index = vma->vm_pgoff >> (VMT_OFFSET_SHIFT - PAGE_SHIFT);
	u64 off = (u64)(vma->vm_pgoff &
		  ((1UL << (VMT_OFFSET_SHIFT - PAGE_SHIFT)) - 1)) << PAGE_SHIFT;

	if (vma->vm_end <= vma->vm_start)
		return -EINVAL;
	if (index != VMT_MIG_REGION_INDEX || !vmt_kind_is_v1(d->kind))
		return -EINVAL;
	return vmt_v1_mmap(d, vma, off);
}

static void vmt_intx_disable(struct vmt_dev *d)
{
	if (d->intx_trigger) {
		eventfd_ctx_put(d->intx_trigger);
		atomic_long_dec(&vmt_live_allocs);
		d->intx_trigger = NULL;
	}
	d->intx_masked = false;
}

static void vmt_intx_signal(struct vmt_dev *d)
{
	if (!d->intx_trigger || d->intx_masked)
		return;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 8, 0)
	eventfd_signal(d->intx_trigger);
#else
	eventfd_signal(d->intx_trigger, 1);
#endif
	d->intx_masked = true;	/* automasked, as a level interrupt */
}

static int vmt_set_irqs(struct vmt_dev *d, struct vfio_irq_set *hdr, u8 *data)
{
	u32 dtype = hdr->flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
	bool on = dtype == VFIO_IRQ_SET_DATA_NONE || (data && data[0]);

	lockdep_assert_held(&d->lock);
	if (hdr->index != VFIO_PCI_INTX_IRQ_INDEX)
		return -EINVAL;

	switch (hdr->flags & VFIO_IRQ_SET_ACTION_TYPE_MASK) {
	case VFIO_IRQ_SET_ACTION_MASK:
	case VFIO_IRQ_SET_ACTION_UNMASK:
		if (dtype == VFIO_IRQ_SET_DATA_EVENTFD || hdr->count != 1)
			return -EINVAL;
		if (on)
			d->intx_masked = (hdr->flags & VFIO_IRQ_SET_ACTION_MASK);
		return 0;
	case VFIO_IRQ_SET_ACTION_TRIGGER:
		if (dtype == VFIO_IRQ_SET_DATA_NONE && !hdr->count) {
			vmt_intx_disable(d);
			return 0;
		}
		if (hdr->count != 1)
			return -EINVAL;
		if (dtype == VFIO_IRQ_SET_DATA_EVENTFD) {
			s32 fd = *(s32 *)data;
			struct eventfd_ctx *ctx;

			if (fd < -1)
				return -EINVAL;
			vmt_intx_disable(d);
			if (fd == -1)
				return 0;
			ctx = eventfd_ctx_fdget(fd);
			if (IS_ERR(ctx))
				return PTR_ERR(ctx);
			atomic_long_inc(&vmt_live_allocs);
			d->intx_trigger = ctx;
			return 0;
		}
		if (on)
			vmt_intx_signal(d);
		return 0;
	}
	return -EINVAL;
}

static int vmt_region_info(struct vmt_dev *d, struct vfio_region_info *info,
			   struct vfio_info_cap *caps)
{
	lockdep_assert_held(&d->lock);
	if (info->index >= vmt_num_regions(d))
		return -EINVAL;
	info->offset = VMT_INDEX_TO_OFFSET(info->index);
	info->size = 0;
	info->flags = 0;
	switch (info->index) {
	case VFIO_PCI_CONFIG_REGION_INDEX:
		info->size = VMT_CONFIG_SIZE;
		info->flags = VFIO_REGION_INFO_FLAG_READ |
			      VFIO_REGION_INFO_FLAG_WRITE;
		return 0;
	case VFIO_PCI_BAR0_REGION_INDEX:
		info->size = VMT_BAR0_SIZE;
		info->flags = VFIO_REGION_INFO_FLAG_READ |
			      VFIO_REGION_INFO_FLAG_WRITE;
		return 0;
	case VMT_MIG_REGION_INDEX:
		return vmt_v1_region_info(d, info, caps);
	}
	return 0;	/* BAR1-5, ROM, VGA: present, empty */
}

static long vmt_ioctl_region_info(struct vmt_dev *d, void __user *arg)
{
	struct vfio_info_cap caps = { .buf = NULL, .size = 0 };
	struct vfio_region_info info;
	unsigned long minsz = offsetofend(struct vfio_region_info, offset);
	int ret;

	if (copy_from_user(&info, arg, minsz))
		return -EFAULT;
	if (info.argsz < minsz)
		return -EINVAL;

	mutex_lock(&d->lock);
	ret = vmt_region_info(d, &info, &caps);
	mutex_unlock(&d->lock);
	if (ret)
		goto out;

	info.cap_offset = 0;
	if (caps.size) {
		info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
		if (info.argsz < sizeof(info) + caps.size) {
			info.argsz = sizeof(info) + caps.size;
		} else {
			vfio_info_cap_shift(&caps, sizeof(info));
			if (copy_to_user(arg + sizeof(info), caps.buf,
					 caps.size)) {
				ret = -EFAULT;
				goto out;
			}
			info.cap_offset = sizeof(info);
		}
	}
	if (copy_to_user(arg, &info, minsz))
		ret = -EFAULT;
out:
	kfree(caps.buf);
	return ret;
}

static long vmt_ioctl(struct vfio_device *vdev, unsigned int cmd,
		      unsigned long arg)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);
	void __user *uarg = (void __user *)arg;
	unsigned long minsz;
	int ret;

	switch (cmd) {
	case VFIO_DEVICE_GET_INFO: {
		struct vfio_device_info info;

		minsz = offsetofend(struct vfio_device_info, num_irqs);
		if (copy_from_user(&info, uarg, minsz))
			return -EFAULT;
		if (info.argsz < minsz)
			return -EINVAL;
		info.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
		info.num_regions = vmt_num_regions(d);
		info.num_irqs = VFIO_PCI_NUM_IRQS;
		return copy_to_user(uarg, &info, minsz) ? -EFAULT : 0;
	}
	case VFIO_DEVICE_GET_REGION_INFO:
		return vmt_ioctl_region_info(d, uarg);

	case VFIO_DEVICE_GET_IRQ_INFO: {
		struct vfio_irq_info info;

		minsz = offsetofend(struct vfio_irq_info, count);
		if (copy_from_user(&info, uarg, minsz))
			return -EFAULT;
		if (info.argsz < minsz || info.index >= VFIO_PCI_NUM_IRQS)
			return -EINVAL;
		info.flags = VFIO_IRQ_INFO_EVENTFD;
		info.count = 0;
		if (info.index == VFIO_PCI_INTX_IRQ_INDEX) {
			info.flags |= VFIO_IRQ_INFO_MASKABLE |
				      VFIO_IRQ_INFO_AUTOMASKED;
			info.count = 1;
		}
		return copy_to_user(uarg, &info, minsz) ? -EFAULT : 0;
	}
	case VFIO_DEVICE_SET_IRQS: {
		struct vfio_irq_set hdr;
		size_t data_size = 0;
		u8 *data = NULL;

		minsz = offsetofend(struct vfio_irq_set, count);
		if (copy_from_user(&hdr, uarg, minsz))
			return -EFAULT;
		ret = vfio_set_irqs_validate_and_prepare(&hdr,
							 hdr.index == VFIO_PCI_INTX_IRQ_INDEX,
							 VFIO_PCI_NUM_IRQS, &data_size);
		if (ret)
			return ret;
		if (data_size) {
			data = memdup_user(uarg + minsz, data_size);
			if (IS_ERR(data))
				return PTR_ERR(data);
		}
		mutex_lock(&d->lock);
		ret = vmt_set_irqs(d, &hdr, data);
		mutex_unlock(&d->lock);
		kfree(data);
		return ret;
	}
	case VFIO_DEVICE_RESET:
		mutex_lock(&d->lock);
		vmt_count(d, VMT_C_RESETS);
		if (vmt_kind_is_v1(d->kind))
			vmt_v1_reset(d);
		else if (d->kind == VMT_KIND_V2)
			vmt_v2_reset(d);
		if (vmt_bug(d, VMT_B_RESET_STOPS)) {
			/* the protocol ends up stopped instead of RUNNING */
			d->v1_state &= ~VFIO_DEVICE_STATE_MASK;
			if (d->kind == VMT_KIND_V2)
				d->v2_state = VFIO_DEVICE_STATE_STOP;
		}
		vmt_intx_disable(d);
		put_unaligned_le16(0, d->config + PCI_COMMAND);
		vmt_dirty_kick(d);
		mutex_unlock(&d->lock);
		return 0;
	}
	return -ENOTTY;
}

static int vmt_open_device(struct vfio_device *vdev)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);
	int ret = 0;

	mutex_lock(&d->lock);
	if (vmt_kind_is_v1(d->kind))
		ret = vmt_v1_open(d);
	else if (d->kind == VMT_KIND_V2)
		d->v2_state = VFIO_DEVICE_STATE_RUNNING;
	if (!ret) {
		d->open = true;
		put_unaligned_le16(0, d->config + PCI_COMMAND);
		vmt_count(d, VMT_C_OPENS);
		vmt_dirty_kick(d);
	}
	mutex_unlock(&d->lock);
	return ret;
}

static void vmt_close_device(struct vfio_device *vdev)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);

	mutex_lock(&d->lock);
	if (vmt_kind_is_v1(d->kind))
		vmt_v1_close(d);
	else if (d->kind == VMT_KIND_V2)
		vmt_v2_close(d);
	vmt_log_close(d);	/* logging ends with the open file */
	vmt_intx_disable(d);
	d->open = false;
	vmt_count(d, VMT_C_CLOSES);
	mutex_unlock(&d->lock);
	/* the work sees !open and does not re-arm */
	cancel_delayed_work_sync(&d->dirty_work);
}

static int vmt_init_dev(struct vfio_device *vdev)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);
	struct mdev_device *mdev = to_mdev_device(vdev->dev);
	struct vmt_type *type = container_of(mdev->type, struct vmt_type, type);
	int avail = atomic_read(&vmt_avail);

	do {
		if (avail < 1)
			return -ENOSPC;
	} while (!atomic_try_cmpxchg(&vmt_avail, &avail, avail - 1));

	d->mdev = mdev;
	d->kind = type->kind;
	mutex_init(&d->lock);
	spin_lock_init(&d->fault_lock);
	d->fault_point = -1;
	d->bug = -1;
	xa_init(&d->pages);
	INIT_DELAYED_WORK(&d->dirty_work, vmt_dirty_work_fn);
	d->state_size = VMT_STATE_DEFAULT;
	d->chunk_size = VMT_CHUNK_DEFAULT;
	d->v1_state = VFIO_DEVICE_STATE_V1_RUNNING;
	d->v2_state = VFIO_DEVICE_STATE_RUNNING;
	vmt_config_init(d);

	if (d->kind == VMT_KIND_V2) {
		vdev->migration_flags = VFIO_MIGRATION_STOP_COPY |
					VFIO_MIGRATION_P2P;
#if VMT_HAVE_PRECOPY
		vdev->migration_flags |= VFIO_MIGRATION_PRE_COPY;
#endif
		vdev->mig_ops = &vmt_v2_mig_ops;
	}
	/* every type logs its DMA (dma_write); the uapi has it since 6.1 */
	vdev->log_ops = &vmt_log_ops;
	atomic_long_inc(&vmt_live_allocs);
	return 0;
}

static void vmt_release_dev(struct vfio_device *vdev)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);

	mutex_lock(&d->lock);
	vmt_save_end(d);
	vmt_state_free_all(d);
	mutex_unlock(&d->lock);
	xa_destroy(&d->pages);
	mutex_destroy(&d->lock);
	atomic_inc(&vmt_avail);
	atomic_long_dec(&vmt_live_allocs);
}

static const struct vfio_device_ops vmt_dev_ops = {
	.name = "vfio-mig-test",
	.init = vmt_init_dev,
	.release = vmt_release_dev,
	.open_device = vmt_open_device,
	.close_device = vmt_close_device,
	.read = vmt_read,
	.write = vmt_write,
	.ioctl = vmt_ioctl,
	.mmap = vmt_mmap,
#if IS_ENABLED(CONFIG_IOMMUFD) && LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
	.bind_iommufd = vfio_iommufd_emulated_bind,
	.unbind_iommufd = vfio_iommufd_emulated_unbind,
	.attach_ioas = vfio_iommufd_emulated_attach_ioas,
	.detach_ioas = vfio_iommufd_emulated_detach_ioas,
#endif
};

/* --- per-instance sysfs: /sys/bus/mdev/devices/UUID/vfio_mig_test/ ---- */

static struct vmt_dev *vmt_from_dev(struct device *dev)
{
	return dev_get_drvdata(dev);
}

/* A u32 knob (the field at `offset` in struct vmt_dev), read under the device's lock. */
static ssize_t vmt_show_u32(struct device *dev, char *buf, size_t offset,
			    const char *fmt)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	u32 v;

	mutex_lock(&d->lock);
	v = *(u32 *)((u8 *)d + offset);
	mutex_unlock(&d->lock);
	return sysfs_emit(buf, fmt, v);
}

/* A u32 written to a knob: any base kstrtou32 takes, at most `max` (else -EINVAL). */
static int vmt_parse_u32(const char *buf, u32 max, u32 *v)
{
	int ret = kstrtou32(buf, 0, v);

	if (ret)
		return ret;
	return *v > max ? -EINVAL : 0;
}

static ssize_t state_size_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	u64 v;

	mutex_lock(&d->lock);
	v = d->state_size;
	mutex_unlock(&d->lock);
	return sysfs_emit(buf, "%llu\n", v);
}

static ssize_t state_size_store(struct device *dev,
				struct device_attribute *attr,
				const char *buf, size_t count)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	u64 v;
	int ret;

	ret = kstrtou64(buf, 0, &v);
	if (ret)
		return ret;
	if (v > VMT_STATE_MAX)
		return -EINVAL;
	mutex_lock(&d->lock);
	ret = vmt_state_resize(d, v);
	mutex_unlock(&d->lock);
	return ret ? ret : count;
}
static DEVICE_ATTR_RW(state_size);

static ssize_t chunk_size_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	return vmt_show_u32(dev, buf, offsetof(struct vmt_dev, chunk_size), "%u\n");
}

static ssize_t chunk_size_store(struct device *dev,
				struct device_attribute *attr,
				const char *buf, size_t count)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	u32 v;
	int ret;

	ret = vmt_parse_u32(buf, VMT_CHUNK_MAX, &v);
	if (ret)
		return ret;
	if (v < VMT_CHUNK_MIN || !PAGE_ALIGNED(v))
		return -EINVAL;
	mutex_lock(&d->lock);
	if (d->open)
		ret = -EBUSY;
	else
		d->chunk_size = v;
	mutex_unlock(&d->lock);
	return ret ? ret : count;
}
static DEVICE_ATTR_RW(chunk_size);

static ssize_t dirty_rate_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	return vmt_show_u32(dev, buf, offsetof(struct vmt_dev, dirty_rate), "%u\n");
}

static ssize_t dirty_rate_store(struct device *dev,
				struct device_attribute *attr,
				const char *buf, size_t count)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	u32 v;
	int ret;

	ret = vmt_parse_u32(buf, VMT_DIRTY_RATE_MAX, &v);
	if (ret)
		return ret;
	mutex_lock(&d->lock);
	d->dirty_rate = v;
	vmt_dirty_kick(d);
	mutex_unlock(&d->lock);
	return count;
}
static DEVICE_ATTR_RW(dirty_rate);

static ssize_t reserved_bits_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	return vmt_show_u32(dev, buf, offsetof(struct vmt_dev, v1_reserved), "0x%08x\n");
}

static ssize_t reserved_bits_store(struct device *dev,
				   struct device_attribute *attr,
				   const char *buf, size_t count)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	u32 v;
	int ret;

	ret = kstrtou32(buf, 0, &v);
	if (ret)
		return ret;
	if (v & VFIO_DEVICE_STATE_MASK)
		return -EINVAL;
	mutex_lock(&d->lock);
	if (!vmt_kind_is_v1(d->kind))
		ret = -EOPNOTSUPP;
	else if (d->open)
		ret = -EBUSY;
	else
		d->v1_reserved = v;
	mutex_unlock(&d->lock);
	return ret ? ret : count;
}
static DEVICE_ATTR_RW(reserved_bits);

/*
 * v2 only: how long every arc of the device's state machine takes, as a real device's firmware
 * does to quiesce, save or load its state; the arc sleeps that long holding the device's lock.
 */
static ssize_t arc_delay_us_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return vmt_show_u32(dev, buf, offsetof(struct vmt_dev, arc_delay_us), "%u\n");
}

static ssize_t arc_delay_us_store(struct device *dev,
				  struct device_attribute *attr,
				  const char *buf, size_t count)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	u32 v;
	int ret;

	ret = vmt_parse_u32(buf, VMT_ARC_DELAY_MAX_US, &v);
	if (ret)
		return ret;
	if (d->kind != VMT_KIND_V2)
		return -EOPNOTSUPP;
	mutex_lock(&d->lock);
	d->arc_delay_us = v;
	mutex_unlock(&d->lock);
	return count;
}
static DEVICE_ATTR_RW(arc_delay_us);

static const char *vmt_errno_name(int err)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(vmt_errnos); i++)
		if (vmt_errnos[i].err == err)
			return vmt_errnos[i].name;
	return NULL;
}

static ssize_t fault_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	int fp, err;
	bool enter;
	const char *name;

	spin_lock(&d->fault_lock);
	fp = d->fault_point;
	err = d->fault_errno;
	enter = d->fault_error;
	spin_unlock(&d->fault_lock);
	if (fp < 0)
		return sysfs_emit(buf, "none\n");
	name = vmt_errno_name(err);
	if (name)
		return sysfs_emit(buf, "%s %s%s\n", vmt_fault_descs[fp].name,
				  name, enter ? " error" : "");
	return sysfs_emit(buf, "%s %d%s\n", vmt_fault_descs[fp].name, err,
			  enter ? " error" : "");
}

static int vmt_parse_errno(const char *s)
{
	unsigned int i;
	int v;

	for (i = 0; i < ARRAY_SIZE(vmt_errnos); i++)
		if (!strcmp(s, vmt_errnos[i].name))
			return vmt_errnos[i].err;
	if (!kstrtoint(s, 10, &v) && v > 0 && v < MAX_ERRNO)
		return v;
	return -EINVAL;
}

/*
 * "<point> <errno> [error]" arms a one-shot fault; "none" disarms it;
 * "error" puts the open device into the error state now.
 */
static ssize_t fault_store(struct device *dev, struct device_attribute *attr,
			   const char *buf, size_t count)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	char tmp[96], *p = tmp, *point, *eno, *flag;
	int fp, err;
	bool enter = false;

	if (count >= sizeof(tmp))
		return -EINVAL;
	memcpy(tmp, buf, count);
	tmp[count] = 0;
	point = strsep(&p, " \t\n");
	while (p && *p && isspace(*p))
		p++;
	eno = strsep(&p, " \t\n");
	while (p && *p && isspace(*p))
		p++;
	flag = strsep(&p, " \t\n");
	while (p && *p && isspace(*p))
		p++;
	if (!point || !*point || (p && *p))
		return -EINVAL;

	if (!strcmp(point, "none") || !strcmp(point, "error")) {
		if (eno && *eno)
			return -EINVAL;
		spin_lock(&d->fault_lock);
		d->fault_point = -1;
		spin_unlock(&d->fault_lock);
		if (!strcmp(point, "none"))
			return count;
		mutex_lock(&d->lock);
		if (d->kind == VMT_KIND_NONE)
			err = -EOPNOTSUPP;
		else if (!d->open)
			err = -ENODEV;
		else
			err = 0;
		if (!err)
			vmt_enter_error(d);
		mutex_unlock(&d->lock);
		return err ? err : count;
	}

	for (fp = 0; fp < VMT_F_NR; fp++)
		if (!strcmp(point, vmt_fault_descs[fp].name))
			break;
	if (fp == VMT_F_NR || !vmt_fault_applies(d, fp) || !eno || !*eno)
		return -EINVAL;
	err = vmt_parse_errno(eno);
	if (err < 0)
		return err;
	if (flag && *flag) {
		if (strcmp(flag, "error") ||
		    (vmt_fault_descs[fp].flags & VMT_FP_NOERR))
			return -EINVAL;
		enter = true;
	}
	spin_lock(&d->fault_lock);
	d->fault_point = fp;
	d->fault_errno = err;
	d->fault_error = enter;
	spin_unlock(&d->fault_lock);
	return count;
}
static DEVICE_ATTR_RW(fault);

static ssize_t fault_points_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	int fp, len = 0;

	for (fp = 0; fp < VMT_F_NR; fp++)
		if (vmt_fault_applies(d, fp))
			len += sysfs_emit_at(buf, len, "%s\n",
					     vmt_fault_descs[fp].name);
	return len;
}
static DEVICE_ATTR_RO(fault_points);

static bool vmt_bug_applies(struct vmt_dev *d, int b)
{
	unsigned int f = vmt_bug_descs[b].flags;

	if ((f & VMT_FP_PC) && !VMT_HAVE_PRECOPY)
		return false;
	if (vmt_kind_is_v1(d->kind))
		return f & VMT_FP_V1;
	if (d->kind == VMT_KIND_V2)
		return f & VMT_FP_V2;
	return false;
}

static ssize_t bug_show(struct device *dev, struct device_attribute *attr,
			char *buf)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	int b = READ_ONCE(d->bug);

	return sysfs_emit(buf, "%s\n", b < 0 ? "none" : vmt_bug_descs[b].name);
}

/* "<bug>" turns one deliberate spec violation on, "none" turns it off. */
static ssize_t bug_store(struct device *dev, struct device_attribute *attr,
			 const char *buf, size_t count)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	char tmp[64];
	int b;

	if (count >= sizeof(tmp))
		return -EINVAL;
	memcpy(tmp, buf, count);
	tmp[count] = 0;
	strim(tmp);
	if (!strcmp(tmp, "none")) {
		WRITE_ONCE(d->bug, -1);
		return count;
	}
	for (b = 0; b < VMT_B_NR; b++)
		if (!strcmp(tmp, vmt_bug_descs[b].name))
			break;
	if (b == VMT_B_NR || !vmt_bug_applies(d, b))
		return -EINVAL;
	mutex_lock(&d->lock);
	d->bug_tick = 0;
	WRITE_ONCE(d->bug, b);
	mutex_unlock(&d->lock);
	return count;
}
static DEVICE_ATTR_RW(bug);

static ssize_t bugs_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	int b, len = 0;

	for (b = 0; b < VMT_B_NR; b++)
		if (vmt_bug_applies(d, b))
			len += sysfs_emit_at(buf, len, "%s\n",
					     vmt_bug_descs[b].name);
	return len;
}
static DEVICE_ATTR_RO(bugs);

static ssize_t counters_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	int i, len = 0;

	for (i = 0; i < VMT_C_NR; i++)
		len += sysfs_emit_at(buf, len, "%s %lld\n", vmt_counter_names[i],
				     (long long)atomic64_read(&d->counters[i]));
	return len;
}
static DEVICE_ATTR_RO(counters);

static ssize_t checksum_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	u64 v;

	mutex_lock(&d->lock);
	v = vmt_state_checksum(d);
	mutex_unlock(&d->lock);
	return sysfs_emit(buf, "0x%016llx\n", v);
}
static DEVICE_ATTR_RO(checksum);

static ssize_t generation_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	u64 v;

	mutex_lock(&d->lock);
	v = d->generation;
	mutex_unlock(&d->lock);
	return sysfs_emit(buf, "%llu\n", v);
}
static DEVICE_ATTR_RO(generation);

static ssize_t mutate_store(struct device *dev, struct device_attribute *attr,
			    const char *buf, size_t count)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	u64 seed;
	int ret;

	ret = kstrtou64(buf, 0, &seed);
	if (ret)
		return ret;
	mutex_lock(&d->lock);
	ret = vmt_state_mutate(d, seed);
	mutex_unlock(&d->lock);
	return ret ? ret : count;
}
static DEVICE_ATTR_WO(mutate);

static ssize_t present_pages_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	struct vmt_dev *d = vmt_from_dev(dev);
	unsigned long v;

	mutex_lock(&d->lock);
	v = d->nr_present;
	mutex_unlock(&d->lock);
	return sysfs_emit(buf, "%lu\n", v);
}
static DEVICE_ATTR_RO(present_pages);

static ssize_t kind_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	struct vmt_dev *d = vmt_from_dev(dev);

	return sysfs_emit(buf, "%s\n", vmt_types[d->kind].type.sysfs_name);
}
static DEVICE_ATTR_RO(kind);

static struct attribute *vmt_dev_attrs[] = {
	&dev_attr_state_size.attr,
	&dev_attr_chunk_size.attr,
	&dev_attr_dirty_rate.attr,
	&dev_attr_reserved_bits.attr,
	&dev_attr_arc_delay_us.attr,
	&dev_attr_fault.attr,
	&dev_attr_fault_points.attr,
	&dev_attr_bug.attr,
	&dev_attr_bugs.attr,
	&dev_attr_counters.attr,
	&dev_attr_checksum.attr,
	&dev_attr_generation.attr,
	&dev_attr_mutate.attr,
	&dev_attr_present_pages.attr,
	&dev_attr_kind.attr,
	&dev_attr_dma_write.attr,
	&dev_attr_dma_log.attr,
	&dev_attr_log_page_size.attr,
	NULL,
};

static const struct attribute_group vmt_dev_group = {
	.name = VMT_NAME,
	.attrs = vmt_dev_attrs,
};

static const struct attribute_group *vmt_dev_groups[] = {
	&vmt_dev_group,
	NULL,
};

/* --- mdev driver ------------------------------------------------------ */

static int vmt_probe(struct mdev_device *mdev)
{
	struct vmt_dev *d;
	int ret;

	d = vfio_alloc_device(vmt_dev, vdev, &mdev->dev, &vmt_dev_ops);
	if (IS_ERR(d))
		return PTR_ERR(d);
	/* before registration: sysfs attributes appear after probe returns */
	dev_set_drvdata(&mdev->dev, d);
	ret = vfio_register_emulated_iommu_dev(&d->vdev);
	if (ret)
		goto err_put;
	return 0;

err_put:
	dev_set_drvdata(&mdev->dev, NULL);
	vfio_put_device(&d->vdev);
	return ret;
}

static void vmt_remove(struct mdev_device *mdev)
{
	struct vmt_dev *d = dev_get_drvdata(&mdev->dev);

	/* waits until every fd of the device is closed */
	vfio_unregister_group_dev(&d->vdev);
	vfio_put_device(&d->vdev);
}

static unsigned int vmt_get_available(struct mdev_type *mtype)
{
	return atomic_read(&vmt_avail);
}

static ssize_t vmt_show_description(struct mdev_type *mtype, char *buf)
{
	struct vmt_type *type = container_of(mtype, struct vmt_type, type);

	return sysfs_emit(buf, "%s\n", type->type.pretty_name);
}

static struct mdev_driver vmt_driver = {
	.device_api = VFIO_DEVICE_API_PCI_STRING,
	.driver = {
		.name = VMT_NAME,
		.owner = THIS_MODULE,
		.mod_name = KBUILD_MODNAME,
		.dev_groups = vmt_dev_groups,
	},
	.probe = vmt_probe,
	.remove = vmt_remove,
	.get_available = vmt_get_available,
	.show_description = vmt_show_description,
};

static void vmt_parent_release(struct device *dev)
{
}

static int __init vmt_init(void)
{
	int ret;

	ret = vmt_state_init();
	if (ret)
		return ret;

	ret = mdev_register_driver(&vmt_driver);
	if (ret)
		goto err_state;

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
	vmt_class = class_create(VMT_NAME);
#else
	vmt_class = class_create(THIS_MODULE, VMT_NAME);
#endif
	if (IS_ERR(vmt_class)) {
		ret = PTR_ERR(vmt_class);
		goto err_driver;
	}

	/* the class name prefixes the type directories: vfio_mig_test-v1 */
	vmt_parent_dev.class = vmt_class;
	vmt_parent_dev.release = vmt_parent_release;
	dev_set_name(&vmt_parent_dev, "%s", VMT_NAME);
	ret = device_register(&vmt_parent_dev);
	if (ret)
		goto err_put;

	ret = mdev_register_parent(&vmt_parent, &vmt_parent_dev, &vmt_driver,
				   vmt_mdev_types, ARRAY_SIZE(vmt_mdev_types));
	if (ret)
		goto err_device;
	return 0;

err_device:
	device_del(&vmt_parent_dev);
err_put:
	put_device(&vmt_parent_dev);
	class_destroy(vmt_class);
err_driver:
	mdev_unregister_driver(&vmt_driver);
err_state:
	vmt_state_exit();
	return ret;
}

static void __exit vmt_exit(void)
{
	long live;

	mdev_unregister_parent(&vmt_parent);
	device_unregister(&vmt_parent_dev);
	class_destroy(vmt_class);
	mdev_unregister_driver(&vmt_driver);
	vmt_state_exit();
	live = atomic_long_read(&vmt_live_allocs);
	if (live)
		pr_err("%s: %ld allocations leaked\n", VMT_NAME, live);
}

module_init(vmt_init);
module_exit(vmt_exit);

MODULE_LICENSE("GPL v2");
MODULE_DESCRIPTION("VFIO migration test vendor driver (v1 region and v2 ops)");
MODULE_AUTHOR("vfio-migration project");
