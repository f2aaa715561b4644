// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio_mig_edu: a vfio-pci variant driver for QEMU's edu device (PCI
 * 1234:11e8). vfio-pci-core does the PCI device; this driver adds v2
 * migration (registers and the internal buffer, moved by the device's own
 * DMA), a reset, and keeps BAR0 trapped. Bound only by driver_override.
 * See README.md.
 */

#include <linux/module.h>
#include <linux/pci.h>
#include <linux/uaccess.h>
#include <linux/vfio.h>
#include <linux/vfio_pci_core.h>

#include "edu.h"

#define EDU_VENDOR	0x1234
#define EDU_DEVICE	0x11e8

static struct edu_dev *edu_of(struct vfio_device *vdev)
{
	return container_of(vdev, struct edu_dev, core.vdev);
}

static int edu_init_dev(struct vfio_device *vdev)
{
	struct edu_dev *e = edu_of(vdev);

	mutex_init(&e->state_mutex);
	xa_init(&e->log_dirty);
	e->mig_state = VFIO_DEVICE_STATE_RUNNING;
	vdev->migration_flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P;
#if EDU_HAVE_PRECOPY
	vdev->migration_flags |= VFIO_MIGRATION_PRE_COPY;
#endif
	vdev->mig_ops = &edu_mig_ops;
	vdev->log_ops = &edu_log_ops;
	return vfio_pci_core_init_dev(vdev);
}

static void edu_release_dev(struct vfio_device *vdev)
{
	struct edu_dev *e = edu_of(vdev);

	xa_destroy(&e->log_dirty);
	mutex_destroy(&e->state_mutex);
	vfio_pci_core_release_dev(vdev);
}

static int edu_open_device(struct vfio_device *vdev)
{
	struct edu_dev *e = edu_of(vdev);
	int ret;

	ret = vfio_pci_core_enable(&e->core);
	if (ret)
		return ret;
	e->bar = pci_iomap(e->core.pdev, 0, 0);
	if (!e->bar) {
		vfio_pci_core_disable(&e->core);
		return -ENOMEM;
	}
	mutex_lock(&e->state_mutex);
	edu_mig_reset(e);
	mutex_unlock(&e->state_mutex);
	vfio_pci_core_finish_enable(&e->core);
	return 0;
}

static void edu_close_device(struct vfio_device *vdev)
{
	struct edu_dev *e = edu_of(vdev);

	mutex_lock(&e->state_mutex);
	edu_mig_reset(e);
	edu_log_close(e);
	mutex_unlock(&e->state_mutex);
	pci_iounmap(e->core.pdev, e->bar);
	e->bar = NULL;
	vfio_pci_core_close_device(vdev);
}

/*
 * The PCI resets vfio-pci-core knows do not exist for edu; ours puts the
 * device's power-on state back and the migration FSM to RUNNING.
 */
static long edu_reset(struct edu_dev *e)
{
	int ret;

	mutex_lock(&e->state_mutex);
	edu_mig_reset(e);
	ret = edu_hw_reset(e);
	mutex_unlock(&e->state_mutex);
	return ret;
}

static long edu_ioctl(struct vfio_device *vdev, unsigned int cmd,
		      unsigned long arg)
{
	struct edu_dev *e = edu_of(vdev);
	void __user *uarg = (void __user *)arg;
	long ret;

	switch (cmd) {
	case VFIO_DEVICE_RESET:
		return edu_reset(e);

	case VFIO_DEVICE_GET_INFO: {
		struct vfio_device_info __user *info = uarg;
		u32 flags;

		ret = vfio_pci_core_ioctl(vdev, cmd, arg);
		if (ret)
			return ret;
		if (get_user(flags, &info->flags))
			return -EFAULT;
		return put_user(flags | VFIO_DEVICE_FLAGS_RESET, &info->flags);
	}

	case VFIO_DEVICE_GET_REGION_INFO: {
		struct vfio_region_info __user *info = uarg;
		u32 index, flags;

		if (get_user(index, &info->index))
			return -EFAULT;
		ret = vfio_pci_core_ioctl(vdev, cmd, arg);
		if (ret || index != VFIO_PCI_BAR0_REGION_INDEX)
			return ret;
		/* BAR0 stays trapped: the driver sees every register write */
		if (get_user(flags, &info->flags))
			return -EFAULT;
		return put_user(flags & ~VFIO_REGION_INFO_FLAG_MMAP,
				&info->flags);
	}
	}
	return vfio_pci_core_ioctl(vdev, cmd, arg);
}

static bool edu_running(enum vfio_device_mig_state s)
{
#if EDU_HAVE_PRECOPY
	if (s == VFIO_DEVICE_STATE_PRE_COPY ||
	    s == VFIO_DEVICE_STATE_PRE_COPY_P2P)
		return true;
#endif
	return s == VFIO_DEVICE_STATE_RUNNING ||
	       s == VFIO_DEVICE_STATE_RUNNING_P2P;
}

/* A write that touches the DMA command register must be that register alone. */
static int edu_check_write(struct edu_dev *e, const char __user *buf,
			   size_t count, loff_t pos, u64 *ram_dst, u64 *ram_len)
{
	u64 off = pos & VFIO_PCI_OFFSET_MASK;
	u32 v32;
	u64 v64;

	*ram_len = 0;
	if (off > EDU_REG_DMA_CMD || off + count <= EDU_REG_DMA_CMD)
		return 0;
	if (off != EDU_REG_DMA_CMD)
		return -EINVAL;
	if (count == sizeof(v64)) {
		if (copy_from_user(&v64, buf, sizeof(v64)))
			return -EFAULT;
	} else if (count == sizeof(v32)) {
		if (copy_from_user(&v32, buf, sizeof(v32)))
			return -EFAULT;
		v64 = v32;
	} else {
		return -EINVAL;
	}
	return edu_hw_check_cmd(e, v64, ram_dst, ram_len);
}

static ssize_t edu_write(struct vfio_device *vdev, const char __user *buf,
			 size_t count, loff_t *ppos)
{
	struct edu_dev *e = edu_of(vdev);
	u64 ram_dst, ram_len;
	ssize_t ret;

	if (VFIO_PCI_OFFSET_TO_INDEX(*ppos) != VFIO_PCI_BAR0_REGION_INDEX)
		return vfio_pci_core_write(vdev, buf, count, ppos);
	mutex_lock(&e->state_mutex);
	if (!edu_running(e->mig_state))
		ret = -EBUSY;	/* a stopped device takes no commands */
	else
		ret = edu_check_write(e, buf, count, *ppos, &ram_dst, &ram_len);
	if (!ret) {
		/* logged before the device can write: a report never misses it */
		edu_log_mark(e, ram_dst, ram_len);
		ret = vfio_pci_core_write(vdev, buf, count, ppos);
	}
	mutex_unlock(&e->state_mutex);
	return ret;
}

static int edu_mmap(struct vfio_device *vdev, struct vm_area_struct *vma)
{
	unsigned int index = vma->vm_pgoff >>
			     (VFIO_PCI_OFFSET_SHIFT - PAGE_SHIFT);

	if (index == VFIO_PCI_BAR0_REGION_INDEX)
		return -EINVAL;
	return vfio_pci_core_mmap(vdev, vma);
}

static const struct vfio_device_ops edu_ops = {
	.name = EDU_NAME,
	.init = edu_init_dev,
	.release = edu_release_dev,
	.open_device = edu_open_device,
	.close_device = edu_close_device,
	.ioctl = edu_ioctl,
	.device_feature = vfio_pci_core_ioctl_feature,
	.read = vfio_pci_core_read,
	.write = edu_write,
	.mmap = edu_mmap,
	.request = vfio_pci_core_request,
	.match = vfio_pci_core_match,
#if IS_ENABLED(CONFIG_IOMMUFD)
	.bind_iommufd = vfio_iommufd_physical_bind,
	.unbind_iommufd = vfio_iommufd_physical_unbind,
	.attach_ioas = vfio_iommufd_physical_attach_ioas,
	.detach_ioas = vfio_iommufd_physical_detach_ioas,
#endif
};

static int edu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct edu_dev *e;
	int ret;

	e = vfio_alloc_device(edu_dev, core.vdev, &pdev->dev, &edu_ops);
	if (IS_ERR(e))
		return PTR_ERR(e);
	dev_set_drvdata(&pdev->dev, &e->core);
	ret = vfio_pci_core_register_device(&e->core);
	if (ret) {
		vfio_put_device(&e->core.vdev);
		return ret;
	}
	return 0;
}

static void edu_remove(struct pci_dev *pdev)
{
	struct vfio_pci_core_device *core = dev_get_drvdata(&pdev->dev);

	vfio_pci_core_unregister_device(core);
	vfio_put_device(&core->vdev);
}

static const struct pci_device_id edu_ids[] = {
	{ PCI_DRIVER_OVERRIDE_DEVICE_VFIO(EDU_VENDOR, EDU_DEVICE) },
	{}
};
MODULE_DEVICE_TABLE(pci, edu_ids);

static struct pci_driver edu_driver = {
	.name = EDU_NAME,
	.id_table = edu_ids,
	.probe = edu_probe,
	.remove = edu_remove,
	.err_handler = &vfio_pci_core_err_handlers,
	.driver_managed_dma = true,
};
module_pci_driver(edu_driver);

MODULE_LICENSE("GPL v2");
MODULE_DESCRIPTION("vfio-pci variant driver for QEMU's edu device, with v2 migration");
MODULE_AUTHOR("vfio-migration project");
