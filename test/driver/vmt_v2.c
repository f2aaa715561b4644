// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio_mig_test: the v2 migration protocol through vfio_migration_ops: the
 * FSM arcs, the data fd (anon inode) for saving and resuming, PRE_COPY and
 * VFIO_MIG_GET_PRECOPY_INFO where the kernel has them.
 */

#include <linux/module.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/file.h>
#include <linux/anon_inodes.h>
#include <linux/poll.h>
#include <linux/delay.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
#include <linux/unaligned.h>
#else
#include <asm/unaligned.h>
#endif

#include "vmt.h"

struct vmt_migf {
	struct file *filp;
	struct vmt_dev *d;	/* pinned by a reference on d->vdev.device */
	bool saving;
	bool disabled;		/* the FSM left the data transfer state */
	bool bad;		/* resuming: an invalid record was written */
	wait_queue_head_t wq;
	/* saving: the record being read */
	u8 *buf;
	size_t cap, len, pos;
	bool rec_init;
	/* resuming: the record being assembled */
	u8 hdr[VMT_REC_HDR];
	size_t hdr_fill;
	u8 *rbuf;
	size_t rcap, rlen, rfill;
};

#define S(x) VFIO_DEVICE_STATE_##x
static const struct {
	u8 from, to;
	enum vmt_fault_point fp;
} vmt_v2_arcs[] = {
	{ S(RUNNING), S(RUNNING_P2P), VMT_F_V2_A_RUNNING_RUNNING_P2P },
	{ S(RUNNING_P2P), S(RUNNING), VMT_F_V2_A_RUNNING_P2P_RUNNING },
	{ S(RUNNING_P2P), S(STOP), VMT_F_V2_A_RUNNING_P2P_STOP },
	{ S(STOP), S(RUNNING_P2P), VMT_F_V2_A_STOP_RUNNING_P2P },
	{ S(STOP), S(STOP_COPY), VMT_F_V2_A_STOP_STOP_COPY },
	{ S(STOP_COPY), S(STOP), VMT_F_V2_A_STOP_COPY_STOP },
	{ S(STOP), S(RESUMING), VMT_F_V2_A_STOP_RESUMING },
	{ S(RESUMING), S(STOP), VMT_F_V2_A_RESUMING_STOP },
#if VMT_HAVE_PRECOPY
	{ S(RUNNING), S(PRE_COPY), VMT_F_V2_A_RUNNING_PRE_COPY },
	{ S(PRE_COPY), S(RUNNING), VMT_F_V2_A_PRE_COPY_RUNNING },
	{ S(RUNNING_P2P), S(PRE_COPY_P2P), VMT_F_V2_A_RUNNING_P2P_PRE_COPY_P2P },
	{ S(PRE_COPY_P2P), S(RUNNING_P2P), VMT_F_V2_A_PRE_COPY_P2P_RUNNING_P2P },
	{ S(PRE_COPY), S(PRE_COPY_P2P), VMT_F_V2_A_PRE_COPY_PRE_COPY_P2P },
	{ S(PRE_COPY_P2P), S(PRE_COPY), VMT_F_V2_A_PRE_COPY_P2P_PRE_COPY },
	{ S(PRE_COPY_P2P), S(STOP_COPY), VMT_F_V2_A_PRE_COPY_P2P_STOP_COPY },
#endif
};

#if VMT_HAVE_PRECOPY
static bool vmt_v2_precopy(enum vfio_device_mig_state s)
{
	return s == S(PRE_COPY) || s == S(PRE_COPY_P2P);
}
#endif

bool vmt_v2_running(struct vmt_dev *d)
{
#if VMT_HAVE_PRECOPY
	if (d->v2_state == S(PRE_COPY))
		return true;
#endif
	return d->v2_state == S(RUNNING);
}

void vmt_v2_wake(struct vmt_dev *d)
{
	lockdep_assert_held(&d->lock);
	if (d->saving_migf && !vmt_bug(d, VMT_B_V2_POLL_NO_WAKE))
		wake_up_interruptible(&d->saving_migf->wq);
}

static void vmt_v2_disable(struct vmt_migf **pmigf)
{
	struct vmt_migf *migf = *pmigf;

	if (!migf)
		return;
	migf->disabled = true;
	wake_up_interruptible(&migf->wq);
	*pmigf = NULL;
	fput(migf->filp);
}

static void vmt_v2_disable_all(struct vmt_dev *d)
{
	lockdep_assert_held(&d->lock);
	vmt_v2_disable(&d->saving_migf);
	vmt_v2_disable(&d->resuming_migf);
	vmt_save_end(d);
	vmt_load_end(d);
}

void vmt_v2_reset(struct vmt_dev *d)
{
	vmt_v2_disable_all(d);
	d->v2_state = S(RUNNING);
}

void vmt_v2_enter_error(struct vmt_dev *d)
{
	vmt_v2_disable_all(d);
	d->v2_state = S(ERROR);
}

void vmt_v2_close(struct vmt_dev *d)
{
	vmt_v2_disable_all(d);
	d->v2_state = S(RUNNING);
}

/* --- the data fd ---------------------------------------------------- */

static int vmt_migf_release(struct inode *inode, struct file *filp)
{
	struct vmt_migf *migf = filp->private_data;

	/* the device holds a file reference until it disables the file */
	vmt_kvfree(migf->buf);
	vmt_kvfree(migf->rbuf);
	vfio_put_device(&migf->d->vdev);
	vmt_kfree(migf);
	return 0;
}

static ssize_t vmt_save_read(struct file *filp, char __user *ubuf, size_t len,
			     loff_t *ppos)
{
	struct vmt_migf *migf = filp->private_data;
	struct vmt_dev *d = migf->d;
	bool err = false;
	size_t done = 0;
	ssize_t ret = 0;

	if (ppos)
		return -ESPIPE;

	mutex_lock(&d->lock);
	vmt_count(d, VMT_C_V2_READS);
	if (migf->disabled) {
		ret = vmt_bug(d, VMT_B_V2_FD_AFTER_STOP) ? 0 : -ENODEV;
		goto out;
	}
	ret = vmt_fault(d, VMT_F_V2_DATA_READ, &err);
	if (ret)
		goto out;

	while (done < len) {
		size_t n;

		if (migf->pos == migf->len) {
			ssize_t r = vmt_save_build(d, migf->buf, migf->cap,
						   &migf->rec_init);

			if (r < 0) {
				ret = r;
				err = true;
				break;
			}
			if (!r)
				break;
			migf->len = r;
			migf->pos = 0;
		}
		n = min(len - done, migf->len - migf->pos);
		if (copy_to_user(ubuf + done, migf->buf + migf->pos, n)) {
			ret = -EFAULT;
			break;
		}
		migf->pos += n;
		done += n;
	}
	if (done) {
		ret = done;
		vmt_count_add(d, VMT_C_V2_BYTES_READ, done);
	} else if (!ret && (!d->save->stopped ||
			    vmt_bug(d, VMT_B_V2_ENOMSG_STOP_COPY))) {
		/* PRE_COPY: temporary end of stream */
		ret = -ENOMSG;
	}
out:
	if (err)
		vmt_enter_error(d);
	mutex_unlock(&d->lock);
	return ret;
}

static __poll_t vmt_save_poll(struct file *filp, struct poll_table_struct *wait)
{
	struct vmt_migf *migf = filp->private_data;
	struct vmt_dev *d = migf->d;
	__poll_t mask = 0;

	poll_wait(filp, &migf->wq, wait);
	mutex_lock(&d->lock);
	if (migf->disabled)
		mask = EPOLLERR | EPOLLHUP;
	else if (d->save->stopped && vmt_bug(d, VMT_B_V2_POLL_EOF_UNREADABLE))
		mask = 0;	/* STOP_COPY's end of stream must poll readable */
	else if (migf->pos < migf->len || d->save->stopped ||
		 vmt_save_pending(d) ||
		 vmt_bug(d, VMT_B_V2_POLL_PRECOPY_READABLE))
		mask = EPOLLIN | EPOLLRDNORM;
	mutex_unlock(&d->lock);
	return mask;
}

#if VMT_HAVE_PRECOPY
static long vmt_save_ioctl(struct file *filp, unsigned int cmd,
			   unsigned long arg)
{
	struct vmt_migf *migf = filp->private_data;
	struct vmt_dev *d = migf->d;
	struct vfio_precopy_info info;
	unsigned long minsz;
	bool err = false;
	u64 init, dirty;
	long ret;

	if (cmd != VFIO_MIG_GET_PRECOPY_INFO)
		return -ENOTTY;

	minsz = offsetofend(struct vfio_precopy_info, dirty_bytes);
	if (copy_from_user(&info, (void __user *)arg, minsz))
		return -EFAULT;
	if (info.argsz < minsz)
		return -EINVAL;

	mutex_lock(&d->lock);
	vmt_count(d, VMT_C_V2_PRECOPY_INFO);
	if (migf->disabled) {
		ret = -ENODEV;
		goto out;
	}
	/* valid only in the PRE_COPY states */
	if (!vmt_v2_precopy(d->v2_state) &&
	    !vmt_bug(d, VMT_B_V2_PRECOPY_INFO_ANY)) {
		ret = -EINVAL;
		goto out;
	}
	ret = vmt_fault(d, VMT_F_V2_DATA_PRECOPY_INFO, &err);
	if (ret)
		goto out;
	vmt_save_estimate(d, &init, &dirty);
	if (migf->rec_init)
		init += migf->len - migf->pos;
	else
		dirty += migf->len - migf->pos;
	info.flags = 0;
	info.initial_bytes = init;
	info.dirty_bytes = dirty;
	if (copy_to_user((void __user *)arg, &info, minsz))
		ret = -EFAULT;
out:
	if (err)
		vmt_enter_error(d);
	mutex_unlock(&d->lock);
	return ret;
}
#endif

static const struct file_operations vmt_save_fops = {
	.owner = THIS_MODULE,
	.read = vmt_save_read,
	.poll = vmt_save_poll,
#if VMT_HAVE_PRECOPY
	.unlocked_ioctl = vmt_save_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
#endif
	.release = vmt_migf_release,
};

/* Validates a record header as soon as it is complete. */
static int vmt_resume_header(struct vmt_migf *migf)
{
	u32 len = get_unaligned_le32(migf->hdr + 12);

	if (get_unaligned_le32(migf->hdr) != VMT_REC_MAGIC ||
	    len < VMT_REC_HDR || len > VMT_CHUNK_MAX)
		return -EINVAL;
	if (migf->rcap < len) {
		vmt_kvfree(migf->rbuf);
		migf->rbuf = vmt_kvzalloc(len);
		migf->rcap = migf->rbuf ? len : 0;
		if (!migf->rbuf)
			return -ENOMEM;
	}
	memcpy(migf->rbuf, migf->hdr, VMT_REC_HDR);
	migf->rlen = len;
	migf->rfill = VMT_REC_HDR;
	return 0;
}

static ssize_t vmt_resume_write(struct file *filp, const char __user *ubuf,
				size_t len, loff_t *ppos)
{
	struct vmt_migf *migf = filp->private_data;
	struct vmt_dev *d = migf->d;
	bool err = false;
	size_t done = 0;
	ssize_t ret = 0;

	if (ppos)
		return -ESPIPE;

	mutex_lock(&d->lock);
	vmt_count(d, VMT_C_V2_WRITES);
	if (migf->disabled) {
		ret = -ENODEV;
		goto out;
	}
	ret = vmt_fault(d, VMT_F_V2_DATA_WRITE, &err);
	if (ret)
		goto out;
	/* a driver that wants each record header in one write() */
	if (vmt_bug(d, VMT_B_V2_SEGMENTATION_STRICT) && len < VMT_REC_HDR) {
		ret = -EINVAL;
		goto out;
	}
	if (migf->bad) {
		ret = -EINVAL;
		goto out;
	}

	while (done < len) {
		size_t n;

		if (migf->hdr_fill < VMT_REC_HDR) {
			n = min(len - done, VMT_REC_HDR - migf->hdr_fill);
			if (copy_from_user(migf->hdr + migf->hdr_fill,
					   ubuf + done, n)) {
				ret = -EFAULT;
				break;
			}
			migf->hdr_fill += n;
			done += n;
			if (migf->hdr_fill < VMT_REC_HDR)
				continue;
			ret = vmt_resume_header(migf);
			if (ret)
				break;
		} else {
			n = min(len - done, migf->rlen - migf->rfill);
			if (copy_from_user(migf->rbuf + migf->rfill,
					   ubuf + done, n)) {
				ret = -EFAULT;
				break;
			}
			migf->rfill += n;
			done += n;
		}
		if (migf->rfill == migf->rlen) {
			ret = vmt_load_record(d, migf->rbuf, migf->rlen);
			if (ret)
				break;
			migf->hdr_fill = 0;
			migf->rfill = 0;
			migf->rlen = 0;
		}
	}
	if (ret == -EINVAL || ret == -ENOMEM)
		migf->bad = true;
	if (!ret)
		ret = done;
	if (done)
		vmt_count_add(d, VMT_C_V2_BYTES_WRITTEN, done);
out:
	if (err)
		vmt_enter_error(d);
	mutex_unlock(&d->lock);
	return ret;
}

static __poll_t vmt_resume_poll(struct file *filp, struct poll_table_struct *wait)
{
	struct vmt_migf *migf = filp->private_data;
	struct vmt_dev *d = migf->d;
	__poll_t mask;

	poll_wait(filp, &migf->wq, wait);
	mutex_lock(&d->lock);
	mask = migf->disabled ? EPOLLERR | EPOLLHUP : EPOLLOUT | EPOLLWRNORM;
	mutex_unlock(&d->lock);
	return mask;
}

static const struct file_operations vmt_resume_fops = {
	.owner = THIS_MODULE,
	.write = vmt_resume_write,
	.poll = vmt_resume_poll,
	.release = vmt_migf_release,
};

static struct vmt_migf *vmt_migf_new(struct vmt_dev *d, bool saving)
{
	struct vmt_migf *migf;
	struct file *filp;

	migf = vmt_kzalloc(sizeof(*migf));
	if (!migf)
		return ERR_PTR(-ENOMEM);
	if (saving) {
		migf->cap = d->chunk_size;
		migf->buf = vmt_kvzalloc(migf->cap);
		if (!migf->buf) {
			vmt_kfree(migf);
			return ERR_PTR(-ENOMEM);
		}
	}
	init_waitqueue_head(&migf->wq);
	migf->d = d;
	migf->saving = saving;
	filp = anon_inode_getfile(VMT_NAME, saving ? &vmt_save_fops :
				  &vmt_resume_fops, migf,
				  saving ? O_RDONLY : O_WRONLY);
	if (IS_ERR(filp)) {
		vmt_kvfree(migf->buf);
		vmt_kfree(migf);
		return ERR_CAST(filp);
	}
	stream_open(filp->f_inode, filp);
	migf->filp = filp;
	/* the file may outlive the device fd: keep the device allocated */
	get_device(&d->vdev.device);
	return migf;
}

/*
 * Arcs in progress across every device of the driver, and the most seen at once since the
 * peak was last reset (module parameter arcs_in_flight_peak; writing 0 resets it): how a
 * client's state changes of several devices overlap, without timing them.
 */
static atomic_t vmt_arcs_in_flight = ATOMIC_INIT(0);
static atomic_t vmt_arcs_peak = ATOMIC_INIT(0);

static int vmt_arcs_peak_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&vmt_arcs_peak));
}

static int vmt_arcs_peak_set(const char *val, const struct kernel_param *kp)
{
	int v, ret = kstrtoint(val, 0, &v);

	if (ret)
		return ret;
	if (v != 0)
		return -EINVAL;
	atomic_set(&vmt_arcs_peak, atomic_read(&vmt_arcs_in_flight));
	return 0;
}

static const struct kernel_param_ops vmt_arcs_peak_ops = {
	.get = vmt_arcs_peak_get,
	.set = vmt_arcs_peak_set,
};
module_param_cb(arcs_in_flight_peak, &vmt_arcs_peak_ops, NULL, 0644);
MODULE_PARM_DESC(arcs_in_flight_peak,
		 "Most v2 arcs in progress at once, over all devices, since written 0");

/* An arc starts: count it, then take the device's arc_delay_us (held lock: firmware time). */
static void vmt_arc_begin(struct vmt_dev *d)
{
	int now = atomic_inc_return(&vmt_arcs_in_flight);
	int peak = atomic_read(&vmt_arcs_peak);

	while (now > peak) {
		int seen = atomic_cmpxchg(&vmt_arcs_peak, peak, now);

		if (seen == peak)
			break;
		peak = seen;
	}
	/* not fsleep(): before 6.13 it may sleep up to twice as long as asked */
	if (d->arc_delay_us >= 20000)
		msleep(DIV_ROUND_UP(d->arc_delay_us, 1000));
	else if (d->arc_delay_us)
		usleep_range(d->arc_delay_us, d->arc_delay_us + d->arc_delay_us / 16 + 1);
}

static void vmt_arc_end(void)
{
	atomic_dec(&vmt_arcs_in_flight);
}

static struct file *vmt_v2_step(struct vmt_dev *d,
				enum vfio_device_mig_state cur,
				enum vfio_device_mig_state new)
{
	struct vmt_migf *migf;
	int ret;

	switch (cur << 4 | new) {
	case S(RUNNING) << 4 | S(RUNNING_P2P):
	case S(RUNNING_P2P) << 4 | S(RUNNING):
	case S(RUNNING_P2P) << 4 | S(STOP):
	case S(STOP) << 4 | S(RUNNING_P2P):
#if VMT_HAVE_PRECOPY
	case S(PRE_COPY) << 4 | S(PRE_COPY_P2P):
	case S(PRE_COPY_P2P) << 4 | S(PRE_COPY):
#endif
		return NULL;

	case S(STOP) << 4 | S(STOP_COPY):
#if VMT_HAVE_PRECOPY
	case S(RUNNING) << 4 | S(PRE_COPY):
	case S(RUNNING_P2P) << 4 | S(PRE_COPY_P2P):
#endif
		ret = vmt_save_start(d, new == S(STOP_COPY), VMT_REC_V2);
		if (ret)
			return ERR_PTR(ret);
		migf = vmt_migf_new(d, true);
		if (IS_ERR(migf)) {
			vmt_save_end(d);
			return ERR_CAST(migf);
		}
		d->saving_migf = migf;
		return get_file(migf->filp);

#if VMT_HAVE_PRECOPY
	case S(PRE_COPY_P2P) << 4 | S(STOP_COPY):
		/* same session, same fd: the rest of the state follows */
		d->save->stopped = true;
		wake_up_interruptible(&d->saving_migf->wq);
		return NULL;

	case S(PRE_COPY) << 4 | S(RUNNING):
	case S(PRE_COPY_P2P) << 4 | S(RUNNING_P2P):
#endif
	case S(STOP_COPY) << 4 | S(STOP):
		vmt_v2_disable(&d->saving_migf);
		vmt_save_end(d);
		return NULL;

	case S(STOP) << 4 | S(RESUMING):
		migf = vmt_migf_new(d, false);
		if (IS_ERR(migf))
			return ERR_CAST(migf);
		vmt_load_start(d, VMT_REC_V2);
		d->resuming_migf = migf;
		return get_file(migf->filp);

	case S(RESUMING) << 4 | S(STOP):
		/* the stream must be complete and valid */
		migf = d->resuming_migf;
		if (!migf || ((migf->bad || migf->hdr_fill || !d->load.done) &&
			      !vmt_bug(d, VMT_B_V2_TRUNCATED_OK))) {
			vmt_count(d, VMT_C_RECORDS_REJECTED);
			return ERR_PTR(-EINVAL);
		}
		vmt_v2_disable(&d->resuming_migf);
		vmt_load_end(d);
		return NULL;
	}
	return ERR_PTR(-EINVAL);
}

static struct file *vmt_v2_set_state(struct vfio_device *vdev,
				     enum vfio_device_mig_state new_state)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);
	struct file *ret = NULL;
	bool err = false;

	mutex_lock(&d->lock);
	while (d->v2_state != new_state) {
		enum vfio_device_mig_state next;
		unsigned int i;
		int rc;

		/*
		 * Only VFIO_DEVICE_RESET leaves ERROR; 6.1's
		 * vfio_mig_get_next_state() WARNs when asked from ERROR.
		 */
		if (d->v2_state == S(ERROR)) {
			ret = ERR_PTR(-EINVAL);
			break;
		}
		rc = vfio_mig_get_next_state(vdev, d->v2_state, new_state, &next);
		if (rc) {
			ret = ERR_PTR(rc);
			break;
		}
		for (i = 0; i < ARRAY_SIZE(vmt_v2_arcs); i++)
			if (vmt_v2_arcs[i].from == d->v2_state &&
			    vmt_v2_arcs[i].to == next)
				break;
		if (i == ARRAY_SIZE(vmt_v2_arcs)) {
			ret = ERR_PTR(-EINVAL);
			break;
		}
		rc = vmt_fault(d, vmt_v2_arcs[i].fp, &err);
		if (rc) {
			ret = ERR_PTR(rc);
			break;
		}
		vmt_arc_begin(d);
		ret = vmt_v2_step(d, d->v2_state, next);
		vmt_arc_end();
		if (IS_ERR(ret))
			break;
		d->v2_state = next;
		vmt_count(d, VMT_C_V2_ARCS);
		/* only the last arc of a combination may open a data fd */
		if (ret && next != new_state) {
			fput(ret);
			ret = ERR_PTR(-EINVAL);
			break;
		}
	}
	if (IS_ERR(ret)) {
		vmt_count(d, VMT_C_V2_ARCS_FAILED);
		if (err)
			vmt_enter_error(d);
	} else {
		vmt_dirty_kick(d);
	}
	mutex_unlock(&d->lock);
	return ret;
}

static int vmt_v2_get_state(struct vfio_device *vdev,
			    enum vfio_device_mig_state *curr_state)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);
	bool err = false;
	int ret;

	mutex_lock(&d->lock);
	vmt_count(d, VMT_C_V2_GET_STATE);
	ret = vmt_fault(d, VMT_F_V2_GET_STATE, &err);
	if (err)
		vmt_enter_error(d);
	*curr_state = d->v2_state;
	mutex_unlock(&d->lock);
	return ret;
}

#if VMT_HAVE_DATA_SIZE
static int vmt_v2_get_data_size(struct vfio_device *vdev,
				unsigned long *stop_copy_length)
{
	struct vmt_dev *d = container_of(vdev, struct vmt_dev, vdev);
	bool err = false;
	int ret;

	mutex_lock(&d->lock);
	vmt_count(d, VMT_C_V2_DATA_SIZE);
	ret = vmt_fault(d, VMT_F_V2_DATA_SIZE, &err);
	if (err)
		vmt_enter_error(d);
	*stop_copy_length = vmt_full_estimate(d);
	if (vmt_bug(d, VMT_B_V2_DATA_SIZE_LOW))
		*stop_copy_length /= 16;
	mutex_unlock(&d->lock);
	return ret;
}
#endif

const struct vfio_migration_ops vmt_v2_mig_ops = {
	.migration_set_state = vmt_v2_set_state,
	.migration_get_state = vmt_v2_get_state,
#if VMT_HAVE_DATA_SIZE
	.migration_get_data_size = vmt_v2_get_data_size,
#endif
};
