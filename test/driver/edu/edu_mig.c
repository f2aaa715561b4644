// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio_mig_edu: v2 migration through vfio_migration_ops: the FSM arcs, the
 * data fd (anon inode) for saving and resuming, PRE_COPY and
 * VFIO_MIG_GET_PRECOPY_INFO where the kernel has them.
 */

#include <linux/module.h>
#include <linux/slab.h>
#include <linux/file.h>
#include <linux/anon_inodes.h>
#include <linux/poll.h>
#include <linux/uaccess.h>
#include <linux/crc32.h>

#include "edu.h"

struct edu_migf {
	struct file *filp;
	struct edu_dev *e;	/* pinned by a reference on e's vfio device */
	bool disabled;		/* the FSM left the data transfer state */
	bool ready;		/* saving: data holds the whole stream */
	size_t avail;		/* saving: bytes of data that can be read */
	bool bad;		/* resuming: more than a stream was written */
	wait_queue_head_t wq;
	size_t pos;
	u8 data[EDU_STREAM_SIZE];
};

#define S(x) VFIO_DEVICE_STATE_##x

static void edu_migf_disable(struct edu_migf **pmigf)
{
	struct edu_migf *migf = *pmigf;

	if (!migf)
		return;
	migf->disabled = true;
	wake_up_interruptible(&migf->wq);
	*pmigf = NULL;
	fput(migf->filp);
}

/* After VFIO_DEVICE_RESET, on open and on close: RUNNING, no data fd. */
void edu_mig_reset(struct edu_dev *e)
{
	lockdep_assert_held(&e->state_mutex);
	edu_migf_disable(&e->saving_migf);
	edu_migf_disable(&e->resuming_migf);
	e->mig_state = S(RUNNING);
}

static int edu_migf_release(struct inode *inode, struct file *filp)
{
	struct edu_migf *migf = filp->private_data;

	vfio_put_device(&migf->e->core.vdev);
	kvfree(migf);
	return 0;
}

static ssize_t edu_save_read(struct file *filp, char __user *buf, size_t len,
			     loff_t *ppos)
{
	struct edu_migf *migf = filp->private_data;
	struct edu_dev *e = migf->e;
	ssize_t ret;

	if (ppos)
		return -ESPIPE;
	mutex_lock(&e->state_mutex);
	if (migf->disabled) {
		ret = -ENODEV;
	} else if (migf->pos == migf->avail && !migf->ready) {
		/* PRE_COPY: the state is sent whole once the device stops */
		ret = -ENOMSG;
	} else {
		len = min(len, migf->avail - migf->pos);
		if (copy_to_user(buf, migf->data + migf->pos, len)) {
			ret = -EFAULT;
		} else {
			migf->pos += len;
			ret = len;
		}
	}
	mutex_unlock(&e->state_mutex);
	return ret;
}

static __poll_t edu_save_poll(struct file *filp, struct poll_table_struct *wait)
{
	struct edu_migf *migf = filp->private_data;
	struct edu_dev *e = migf->e;
	__poll_t mask = 0;

	poll_wait(filp, &migf->wq, wait);
	mutex_lock(&e->state_mutex);
	if (migf->disabled)
		mask = EPOLLERR | EPOLLHUP;
	else if (migf->ready || migf->pos < migf->avail)
		mask = EPOLLIN | EPOLLRDNORM;
	mutex_unlock(&e->state_mutex);
	return mask;
}

#if EDU_HAVE_PRECOPY
static long edu_save_ioctl(struct file *filp, unsigned int cmd,
			   unsigned long arg)
{
	struct edu_migf *migf = filp->private_data;
	struct edu_dev *e = migf->e;
	struct vfio_precopy_info info;
	unsigned long minsz;
	long ret = 0;

	if (cmd != VFIO_MIG_GET_PRECOPY_INFO)
		return -ENOTTY;
	minsz = offsetofend(struct vfio_precopy_info, dirty_bytes);
	if (copy_from_user(&info, (void __user *)arg, minsz))
		return -EFAULT;
	if (info.argsz < minsz)
		return -EINVAL;

	mutex_lock(&e->state_mutex);
	if (migf->disabled) {
		ret = -ENODEV;
	} else if (e->mig_state != S(PRE_COPY) &&
		   e->mig_state != S(PRE_COPY_P2P)) {
		ret = -EINVAL;
	} else {
		/* only the preamble goes before the stop */
		info.flags = 0;
		info.initial_bytes = migf->avail - migf->pos;
		info.dirty_bytes = 0;
		if (copy_to_user((void __user *)arg, &info, minsz))
			ret = -EFAULT;
	}
	mutex_unlock(&e->state_mutex);
	return ret;
}
#endif

static const struct file_operations edu_save_fops = {
	.owner = THIS_MODULE,
	.read = edu_save_read,
	.poll = edu_save_poll,
#if EDU_HAVE_PRECOPY
	.unlocked_ioctl = edu_save_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
#endif
	.release = edu_migf_release,
};

static ssize_t edu_resume_write(struct file *filp, const char __user *buf,
				size_t len, loff_t *ppos)
{
	struct edu_migf *migf = filp->private_data;
	struct edu_dev *e = migf->e;
	ssize_t ret;

	if (ppos)
		return -ESPIPE;
	mutex_lock(&e->state_mutex);
	if (migf->disabled) {
		ret = -ENODEV;
	} else if (migf->bad || len > EDU_STREAM_SIZE - migf->pos) {
		migf->bad = true;
		ret = -EINVAL;
	} else if (copy_from_user(migf->data + migf->pos, buf, len)) {
		ret = -EFAULT;
	} else {
		migf->pos += len;
		ret = len;
	}
	mutex_unlock(&e->state_mutex);
	return ret;
}

static __poll_t edu_resume_poll(struct file *filp,
				struct poll_table_struct *wait)
{
	struct edu_migf *migf = filp->private_data;
	struct edu_dev *e = migf->e;
	__poll_t mask;

	poll_wait(filp, &migf->wq, wait);
	mutex_lock(&e->state_mutex);
	mask = migf->disabled ? EPOLLERR | EPOLLHUP : EPOLLOUT | EPOLLWRNORM;
	mutex_unlock(&e->state_mutex);
	return mask;
}

static const struct file_operations edu_resume_fops = {
	.owner = THIS_MODULE,
	.write = edu_resume_write,
	.poll = edu_resume_poll,
	.release = edu_migf_release,
};

/* A saving file starts with the preamble readable. */
static void edu_preamble_fill(struct edu_dev *e, struct edu_migf *migf)
{
	struct edu_preamble *pre = (void *)migf->data;

	pre->magic = cpu_to_le32(EDU_PREAMBLE_MAGIC);
	pre->version = cpu_to_le16(EDU_STREAM_VERSION);
	pre->size = cpu_to_le16(sizeof(*pre));
	pre->ident = cpu_to_le32(edu_hw_ident(e));
	migf->avail = sizeof(*pre);
}

static struct edu_migf *edu_migf_new(struct edu_dev *e, bool saving)
{
	struct edu_migf *migf;
	struct file *filp;

	migf = kvzalloc(sizeof(*migf), GFP_KERNEL_ACCOUNT);
	if (!migf)
		return ERR_PTR(-ENOMEM);
	init_waitqueue_head(&migf->wq);
	migf->e = e;
	filp = anon_inode_getfile(EDU_NAME,
				  saving ? &edu_save_fops : &edu_resume_fops,
				  migf, saving ? O_RDONLY : O_WRONLY);
	if (IS_ERR(filp)) {
		kvfree(migf);
		return ERR_CAST(filp);
	}
	stream_open(filp->f_inode, filp);
	migf->filp = filp;
	if (saving)
		edu_preamble_fill(e, migf);
	/* the file may outlive the device fd: keep the device allocated */
	get_device(&e->core.vdev.device);
	return migf;
}

static u32 edu_crc(const u8 *p, size_t len)
{
	return crc32_le(~0U, p, len) ^ ~0U;
}

/* 0 when @data is a whole, intact stream of ours, for a device with @ident. */
int edu_stream_check(const u8 *data, size_t len, u32 ident)
{
	const struct edu_preamble *pre = (const void *)data;
	const struct edu_stream_hdr *h = (const void *)(pre + 1);
	const u8 *payload = (const u8 *)(h + 1);

	if (len != EDU_STREAM_SIZE ||
	    le32_to_cpu(pre->magic) != EDU_PREAMBLE_MAGIC ||
	    le16_to_cpu(pre->version) != EDU_STREAM_VERSION ||
	    le16_to_cpu(pre->size) != sizeof(*pre) ||
	    le32_to_cpu(pre->ident) != ident ||
	    le32_to_cpu(h->magic) != EDU_STREAM_MAGIC ||
	    le16_to_cpu(h->version) != EDU_STREAM_VERSION ||
	    le16_to_cpu(h->hdr_size) != sizeof(*h) ||
	    le32_to_cpu(h->length) != sizeof(struct edu_payload) ||
	    le32_to_cpu(h->crc) != edu_crc(payload, sizeof(struct edu_payload)))
		return -EINVAL;
	return 0;
}

/* Reads the stopped device into the saving file: header, then payload. */
static int edu_save_fill(struct edu_dev *e, struct edu_migf *migf)
{
	struct edu_stream_hdr *h = (void *)(migf->data +
					    sizeof(struct edu_preamble));
	struct edu_payload *p = (void *)(h + 1);
	int ret;

	ret = edu_hw_capture(e, p);
	if (ret)
		return ret;
	h->magic = cpu_to_le32(EDU_STREAM_MAGIC);
	h->version = cpu_to_le16(EDU_STREAM_VERSION);
	h->hdr_size = cpu_to_le16(sizeof(*h));
	h->length = cpu_to_le32(sizeof(*p));
	h->crc = cpu_to_le32(edu_crc((u8 *)p, sizeof(*p)));
	migf->avail = EDU_STREAM_SIZE;
	migf->ready = true;
	wake_up_interruptible(&migf->wq);
	return 0;
}

static struct file *edu_step(struct edu_dev *e, enum vfio_device_mig_state cur,
			     enum vfio_device_mig_state new)
{
	struct edu_migf *migf;
	int ret;

	switch (cur << 4 | new) {
	case S(RUNNING) << 4 | S(RUNNING_P2P):
	case S(RUNNING_P2P) << 4 | S(RUNNING):
	case S(STOP) << 4 | S(RUNNING_P2P):
#if EDU_HAVE_PRECOPY
	case S(PRE_COPY) << 4 | S(PRE_COPY_P2P):
	case S(PRE_COPY_P2P) << 4 | S(PRE_COPY):
#endif
		/* edu does no peer-to-peer DMA */
		return NULL;

	case S(RUNNING_P2P) << 4 | S(STOP):
		/* stopped: nothing computing, no DMA in flight */
		return NULL;

	case S(STOP) << 4 | S(STOP_COPY):
		migf = edu_migf_new(e, true);
		if (IS_ERR(migf))
			return ERR_CAST(migf);
		ret = edu_save_fill(e, migf);
		if (ret) {
			fput(migf->filp);
			return ERR_PTR(ret);
		}
		e->saving_migf = migf;
		return get_file(migf->filp);

#if EDU_HAVE_PRECOPY
	case S(RUNNING) << 4 | S(PRE_COPY):
	case S(RUNNING_P2P) << 4 | S(PRE_COPY_P2P):
		migf = edu_migf_new(e, true);
		if (IS_ERR(migf))
			return ERR_CAST(migf);
		e->saving_migf = migf;
		return get_file(migf->filp);

	case S(PRE_COPY_P2P) << 4 | S(STOP_COPY):
		/* same session, same fd: the state follows */
		ret = edu_save_fill(e, e->saving_migf);
		return ret ? ERR_PTR(ret) : NULL;

	case S(PRE_COPY) << 4 | S(RUNNING):
	case S(PRE_COPY_P2P) << 4 | S(RUNNING_P2P):
#endif
	case S(STOP_COPY) << 4 | S(STOP):
		edu_migf_disable(&e->saving_migf);
		return NULL;

	case S(STOP) << 4 | S(RESUMING):
		migf = edu_migf_new(e, false);
		if (IS_ERR(migf))
			return ERR_CAST(migf);
		e->resuming_migf = migf;
		return get_file(migf->filp);

	case S(RESUMING) << 4 | S(STOP):
		migf = e->resuming_migf;
		if (migf->bad || edu_stream_check(migf->data, migf->pos,
						  edu_hw_ident(e)))
			return ERR_PTR(-EINVAL);
		ret = edu_hw_restore(e, (void *)(migf->data +
						 sizeof(struct edu_preamble) +
						 sizeof(struct edu_stream_hdr)));
		if (ret)
			return ERR_PTR(ret);
		edu_migf_disable(&e->resuming_migf);
		return NULL;
	}
	return ERR_PTR(-EINVAL);
}

static struct file *edu_set_state(struct vfio_device *vdev,
				  enum vfio_device_mig_state new_state)
{
	struct edu_dev *e = container_of(vdev, struct edu_dev, core.vdev);
	struct file *ret = NULL;

	mutex_lock(&e->state_mutex);
	while (e->mig_state != new_state) {
		enum vfio_device_mig_state next;
		int rc;

		/* only VFIO_DEVICE_RESET leaves ERROR */
		if (e->mig_state == S(ERROR)) {
			ret = ERR_PTR(-EINVAL);
			break;
		}
		rc = vfio_mig_get_next_state(vdev, e->mig_state, new_state,
					     &next);
		if (rc) {
			ret = ERR_PTR(rc);
			break;
		}
		ret = edu_step(e, e->mig_state, next);
		if (IS_ERR(ret))
			break;
		e->mig_state = next;
		/* only the last arc of a combination may open a data fd */
		if (ret && next != new_state) {
			fput(ret);
			ret = ERR_PTR(-EINVAL);
			break;
		}
	}
	mutex_unlock(&e->state_mutex);
	return ret;
}

static int edu_get_state(struct vfio_device *vdev,
			 enum vfio_device_mig_state *curr_state)
{
	struct edu_dev *e = container_of(vdev, struct edu_dev, core.vdev);

	mutex_lock(&e->state_mutex);
	*curr_state = e->mig_state;
	mutex_unlock(&e->state_mutex);
	return 0;
}

#if EDU_HAVE_DATA_SIZE
static int edu_get_data_size(struct vfio_device *vdev,
			     unsigned long *stop_copy_length)
{
	*stop_copy_length = EDU_STREAM_SIZE;
	return 0;
}
#endif

const struct vfio_migration_ops edu_mig_ops = {
	.migration_set_state = edu_set_state,
	.migration_get_state = edu_get_state,
#if EDU_HAVE_DATA_SIZE
	.migration_get_data_size = edu_get_data_size,
#endif
};
