/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * vfio_mig_test: definitions shared by the files of the test vendor driver.
 *
 * One mdev parent ("vfio_mig_test") with four device types that look like PCI
 * devices and implement the vendor-driver side of the VFIO migration
 * protocols: v1 (the deprecated migration region, mmap-able or trapped data
 * section), v2 (vfio_migration_ops and a data fd) and none.
 */
#ifndef VMT_H
#define VMT_H

#include <linux/version.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/xarray.h>
#include <linux/workqueue.h>
#include <linux/wait.h>
#include <linux/atomic.h>
#include <linux/vfio.h>
#include <linux/mdev.h>
#include <linux/sizes.h>

#ifdef VFIO_MIGRATION_PRE_COPY
#define VMT_HAVE_PRECOPY 1
#else
#define VMT_HAVE_PRECOPY 0
#endif

/* vfio_migration_ops.migration_get_data_size appeared in 6.2 with PRE_COPY */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
#define VMT_HAVE_DATA_SIZE 1
#else
#define VMT_HAVE_DATA_SIZE 0
#endif

#define VMT_NAME		"vfio_mig_test"
#define VMT_MAX_INSTANCES	64

enum vmt_kind {
	VMT_KIND_V1,
	VMT_KIND_V1_TRAPPED,
	VMT_KIND_V2,
	VMT_KIND_NONE,
	VMT_KIND_NR,
};

static inline bool vmt_kind_is_v1(enum vmt_kind k)
{
	return k == VMT_KIND_V1 || k == VMT_KIND_V1_TRAPPED;
}

/* Device state granule; fixed by the stream format, not the host page. */
#define VMT_PAGE		4096u
#define VMT_STATE_MAX		SZ_4G
#define VMT_STATE_DEFAULT	SZ_1M
#define VMT_CHUNK_MIN		((u32)PAGE_SIZE)
#define VMT_CHUNK_MAX		(64u << 20)
#define VMT_CHUNK_DEFAULT	(64u << 10)
#define VMT_DIRTY_RATE_MAX	SZ_1G
/* arc_delay_us: at most a second per arc, far below the hung-task timeout */
#define VMT_ARC_DELAY_MAX_US	1000000
#define VMT_DIRTY_TICK_HZ	50

/* Region offsets inside the device fd, as in mtty: index in bits 40+. */
#define VMT_OFFSET_SHIFT	40
#define VMT_OFFSET_MASK		((1ULL << VMT_OFFSET_SHIFT) - 1)
#define VMT_INDEX_TO_OFFSET(i)	((u64)(i) << VMT_OFFSET_SHIFT)

#define VMT_MIG_REGION_INDEX	VFIO_PCI_NUM_REGIONS	/* 9 */
#define VMT_MIG_DATA_OFFSET	((u64)PAGE_SIZE)
#define VMT_CONFIG_SIZE		256
#define VMT_BAR0_SIZE		4096

/* BAR0 registers */
#define VMT_BAR0_MAGIC		0x00	/* u32 RO */
#define VMT_BAR0_VERSION	0x04	/* u32 RO */
#define VMT_BAR0_STATE_SIZE	0x08	/* u64 RO */
#define VMT_BAR0_CHECKSUM	0x10	/* u64 RO */
#define VMT_BAR0_GENERATION	0x18	/* u64 RO */
#define VMT_BAR0_MUTATE		0x20	/* u64 WO */
#define VMT_MAGIC		0x564d5431	/* 'VMT1' */
#define VMT_VERSION		1

/* PCI identity (arbitrary test values, not a registered vendor) */
#define VMT_PCI_VENDOR		0x5654
#define VMT_PCI_DEVICE_BASE	0x7600

/*
 * Migration stream: a sequence of records. v1 carries exactly one record per
 * data section transaction; v2 concatenates them on the data fd.
 */
#define VMT_REC_MAGIC		0x53544d56	/* "VMTS" */
#define VMT_REC_VERSION		1
#define VMT_REC_HDR		32
#define VMT_REC_ENT		16
#define VMT_REC_LAST		0x0001	/* final record of the stream */
#define VMT_REC_V2		0x0002	/* produced by the v2 protocol */
#define VMT_REC_FLAGS		(VMT_REC_LAST | VMT_REC_V2)
#define VMT_ENT_DATA		1
#define VMT_ENT_ZERO		2
#define VMT_ENT_MAX_LEN		0xfffff000u

/* Counters: name shown in sysfs. */
#define VMT_COUNTERS(X)							\
	X(OPENS, "opens")						\
	X(CLOSES, "closes")						\
	X(RESETS, "resets")						\
	X(CONFIG_READS, "config.reads")					\
	X(CONFIG_WRITES, "config.writes")				\
	X(BAR0_READS, "bar0.reads")					\
	X(BAR0_WRITES, "bar0.writes")					\
	X(BAD_ACCESSES, "bad_accesses")					\
	X(V1_RD_DEVICE_STATE, "v1.read.device_state")			\
	X(V1_WR_DEVICE_STATE, "v1.write.device_state")			\
	X(V1_RD_RESERVED, "v1.read.reserved")				\
	X(V1_WR_RESERVED, "v1.write.reserved")				\
	X(V1_RD_PENDING_BYTES, "v1.read.pending_bytes")			\
	X(V1_RD_DATA_OFFSET, "v1.read.data_offset")			\
	X(V1_RD_DATA_SIZE, "v1.read.data_size")				\
	X(V1_WR_DATA_SIZE, "v1.write.data_size")			\
	X(V1_RD_DATA, "v1.read.data")					\
	X(V1_WR_DATA, "v1.write.data")					\
	X(V1_DATA_BYTES_READ, "v1.data_bytes_read")			\
	X(V1_DATA_BYTES_WRITTEN, "v1.data_bytes_written")		\
	X(V1_MMAPS, "v1.mmaps")						\
	X(V1_TRANSITIONS, "v1.transitions")				\
	X(V1_TRANSITIONS_FAILED, "v1.transitions_failed")		\
	X(V2_ARCS, "v2.arcs")						\
	X(V2_ARCS_FAILED, "v2.arcs_failed")				\
	X(V2_GET_STATE, "v2.get_state")					\
	X(V2_DATA_SIZE, "v2.data_size")					\
	X(V2_READS, "v2.data.reads")					\
	X(V2_WRITES, "v2.data.writes")					\
	X(V2_BYTES_READ, "v2.data.bytes_read")				\
	X(V2_BYTES_WRITTEN, "v2.data.bytes_written")			\
	X(V2_PRECOPY_INFO, "v2.data.precopy_info")			\
	X(RECORDS_SAVED, "records_saved")				\
	X(RECORDS_LOADED, "records_loaded")				\
	X(RECORDS_REJECTED, "records_rejected")				\
	X(ERRORS_ENTERED, "errors_entered")				\
	X(FAULTS_FIRED, "faults_fired")					\
	X(MUTATES, "mutates")						\
	X(DIRTY_TICKS, "dirty_ticks")					\
	X(DIRTY_BYTES, "dirty_bytes")					\
	X(LOG_STARTS, "log.starts")					\
	X(LOG_STOPS, "log.stops")					\
	X(LOG_REPORTS, "log.reports")					\
	X(DMA_WRITES, "dma.writes")					\
	X(DMA_BYTES, "dma.bytes")

#define VMT_ENUM(id, name) VMT_C_##id,
enum vmt_counter { VMT_COUNTERS(VMT_ENUM) VMT_C_NR };
#undef VMT_ENUM

/*
 * Fault points. A point applies to v1 types (V1), v2 (V2), and some only
 * exist when the kernel has PRE_COPY (PC). Transitions/arcs are listed
 * separately so they can be looked up by (from, to).
 */
#define VMT_FP_V1	0x1
#define VMT_FP_V2	0x2
#define VMT_FP_PC	0x4	/* needs PRE_COPY in the kernel */
#define VMT_FP_NOERR	0x8	/* cannot carry the "error" suffix */

#define VMT_FAULTS(X)							\
	X(V1_RD_DEVICE_STATE, "v1.read.device_state", VMT_FP_V1)	\
	X(V1_WR_DEVICE_STATE, "v1.write.device_state", VMT_FP_V1)	\
	X(V1_RD_RESERVED, "v1.read.reserved", VMT_FP_V1)		\
	X(V1_WR_RESERVED, "v1.write.reserved", VMT_FP_V1)		\
	X(V1_RD_PENDING_BYTES, "v1.read.pending_bytes", VMT_FP_V1)	\
	X(V1_RD_DATA_OFFSET, "v1.read.data_offset", VMT_FP_V1)		\
	X(V1_RD_DATA_SIZE, "v1.read.data_size", VMT_FP_V1)		\
	X(V1_WR_DATA_SIZE, "v1.write.data_size", VMT_FP_V1)		\
	X(V1_RD_DATA, "v1.read.data", VMT_FP_V1)			\
	X(V1_WR_DATA, "v1.write.data", VMT_FP_V1)			\
	X(V1_MMAP, "v1.mmap", VMT_FP_V1 | VMT_FP_NOERR)			\
	X(V1_T_RUNNING_STOP, "v1.transition.running_stop", VMT_FP_V1)	\
	X(V1_T_RUNNING_SAVING, "v1.transition.running_saving", VMT_FP_V1) \
	X(V1_T_RUNNING_PRECOPY, "v1.transition.running_precopy", VMT_FP_V1) \
	X(V1_T_RUNNING_RESUMING, "v1.transition.running_resuming", VMT_FP_V1) \
	X(V1_T_STOP_RUNNING, "v1.transition.stop_running", VMT_FP_V1)	\
	X(V1_T_STOP_SAVING, "v1.transition.stop_saving", VMT_FP_V1)	\
	X(V1_T_STOP_RESUMING, "v1.transition.stop_resuming", VMT_FP_V1)	\
	X(V1_T_PRECOPY_SAVING, "v1.transition.precopy_saving", VMT_FP_V1) \
	X(V1_T_PRECOPY_RUNNING, "v1.transition.precopy_running", VMT_FP_V1) \
	X(V1_T_SAVING_STOP, "v1.transition.saving_stop", VMT_FP_V1)	\
	X(V1_T_SAVING_RUNNING, "v1.transition.saving_running", VMT_FP_V1) \
	X(V1_T_RESUMING_RUNNING, "v1.transition.resuming_running", VMT_FP_V1) \
	X(V1_T_RESUMING_STOP, "v1.transition.resuming_stop", VMT_FP_V1)	\
	X(V2_GET_STATE, "v2.get_state", VMT_FP_V2)			\
	X(V2_DATA_SIZE, "v2.data_size", VMT_FP_V2 | VMT_FP_PC)		\
	X(V2_DATA_READ, "v2.data.read", VMT_FP_V2)			\
	X(V2_DATA_WRITE, "v2.data.write", VMT_FP_V2)			\
	X(V2_DATA_PRECOPY_INFO, "v2.data.precopy_info", VMT_FP_V2 | VMT_FP_PC) \
	X(V2_A_RUNNING_RUNNING_P2P, "v2.arc.running_running_p2p", VMT_FP_V2) \
	X(V2_A_RUNNING_P2P_RUNNING, "v2.arc.running_p2p_running", VMT_FP_V2) \
	X(V2_A_RUNNING_P2P_STOP, "v2.arc.running_p2p_stop", VMT_FP_V2)	\
	X(V2_A_STOP_RUNNING_P2P, "v2.arc.stop_running_p2p", VMT_FP_V2)	\
	X(V2_A_STOP_STOP_COPY, "v2.arc.stop_stop_copy", VMT_FP_V2)	\
	X(V2_A_STOP_COPY_STOP, "v2.arc.stop_copy_stop", VMT_FP_V2)	\
	X(V2_A_STOP_RESUMING, "v2.arc.stop_resuming", VMT_FP_V2)	\
	X(V2_A_RESUMING_STOP, "v2.arc.resuming_stop", VMT_FP_V2)	\
	X(V2_A_RUNNING_PRE_COPY, "v2.arc.running_pre_copy", VMT_FP_V2 | VMT_FP_PC) \
	X(V2_A_PRE_COPY_RUNNING, "v2.arc.pre_copy_running", VMT_FP_V2 | VMT_FP_PC) \
	X(V2_A_RUNNING_P2P_PRE_COPY_P2P, "v2.arc.running_p2p_pre_copy_p2p", VMT_FP_V2 | VMT_FP_PC) \
	X(V2_A_PRE_COPY_P2P_RUNNING_P2P, "v2.arc.pre_copy_p2p_running_p2p", VMT_FP_V2 | VMT_FP_PC) \
	X(V2_A_PRE_COPY_PRE_COPY_P2P, "v2.arc.pre_copy_pre_copy_p2p", VMT_FP_V2 | VMT_FP_PC) \
	X(V2_A_PRE_COPY_P2P_PRE_COPY, "v2.arc.pre_copy_p2p_pre_copy", VMT_FP_V2 | VMT_FP_PC) \
	X(V2_A_PRE_COPY_P2P_STOP_COPY, "v2.arc.pre_copy_p2p_stop_copy", VMT_FP_V2 | VMT_FP_PC)

#define VMT_ENUM(id, name, flags) VMT_F_##id,
enum vmt_fault_point { VMT_FAULTS(VMT_ENUM) VMT_F_NR };
#undef VMT_ENUM

struct vmt_fault_desc {
	const char *name;
	unsigned int flags;
};

extern const struct vmt_fault_desc vmt_fault_descs[VMT_F_NR];

/*
 * Deliberate spec violations (sysfs "bug"): one at a time, persistent until
 * "none", so that a conformance checker can be shown to catch each of them.
 * Flags as for fault points (V1, V2, PC).
 */
#define VMT_BUGS(X)							\
	X(V1_PENDING_REREAD, "v1.pending_reread", VMT_FP_V1)		\
	X(V1_DATA_OFFSET_OUTSIDE, "v1.data_offset_outside", VMT_FP_V1)	\
	X(V1_INVALID_STATE, "v1.invalid_state_accepted", VMT_FP_V1)	\
	X(V1_RESERVED_LOST, "v1.reserved_lost", VMT_FP_V1)		\
	X(V2_ENOMSG_STOP_COPY, "v2.enomsg_stop_copy", VMT_FP_V2)	\
	X(V2_PRECOPY_INFO_ANY, "v2.precopy_info_any_state", VMT_FP_V2 | VMT_FP_PC) \
	X(V2_DATA_SIZE_LOW, "v2.data_size_low", VMT_FP_V2 | VMT_FP_PC)	\
	X(V2_TRUNCATED_OK, "v2.truncated_stream_accepted", VMT_FP_V2)	\
	X(V2_FD_AFTER_STOP, "v2.fd_readable_after_stop", VMT_FP_V2)	\
	X(V2_SEGMENTATION_STRICT, "v2.segmentation_strict", VMT_FP_V2)	\
	X(V2_POLL_EOF_UNREADABLE, "v2.poll_eof_unreadable", VMT_FP_V2)	\
	X(V2_POLL_PRECOPY_READABLE, "v2.poll_precopy_readable", VMT_FP_V2 | VMT_FP_PC) \
	X(V2_POLL_NO_WAKE, "v2.poll_no_wake", VMT_FP_V2 | VMT_FP_PC)	\
	X(RESET_STOPS, "reset_stops", VMT_FP_V1 | VMT_FP_V2)

#define VMT_ENUM(id, name, flags) VMT_B_##id,
enum vmt_bug { VMT_BUGS(VMT_ENUM) VMT_B_NR };
#undef VMT_ENUM

extern const struct vmt_fault_desc vmt_bug_descs[VMT_B_NR];

/* One saving session: what is still to be sent, and record production. */
struct vmt_save {
	unsigned long npages;
	unsigned long *pend;	/* pages to (re)send */
	unsigned long *init;	/* pages not sent once yet in this session */
	unsigned long n_pend_alloc, n_pend_zero;
	unsigned long n_init_alloc, n_init_zero;
	unsigned long scan;	/* next page index to look at */
	bool part_active;	/* a page is half sent */
	bool part_init;
	unsigned long part_page;
	u32 part_off;
	u32 seq;
	u16 rec_flags;		/* VMT_REC_V2 or 0 */
	bool first_sent;
	bool last_sent;
	bool stopped;		/* device stopped: the final record may follow */
};

/* One resuming session: the stream must arrive in order. */
struct vmt_load {
	bool active;
	bool done;		/* the LAST record was applied */
	u16 rec_flags;
	u32 seq;		/* expected next sequence number */
};

struct vmt_migf;
struct vmt_log_range;

struct vmt_dev {
	struct vfio_device vdev;
	struct mdev_device *mdev;
	enum vmt_kind kind;

	/* protects everything below but the counters and the fault */
	struct mutex lock;
	bool open;

	/* PCI look */
	u8 config[VMT_CONFIG_SIZE];
	u8 config_wmask[VMT_CONFIG_SIZE];
	struct eventfd_ctx *intx_trigger;
	bool intx_masked;

	/* device state: xarray of 4 KiB pages, absent = zero */
	struct xarray pages;
	unsigned long nr_present;
	u64 state_size;
	u64 generation;
	u32 chunk_size;
	u32 dirty_rate;		/* bytes per second while running */
	u64 dirty_cursor;
	u64 dirty_carry;
	struct delayed_work dirty_work;

	struct vmt_save *save;	/* saving session, v1 or v2 */
	struct vmt_load load;	/* resuming session, v1 or v2 */

	/* v1 */
	u32 v1_state;		/* device_state incl. reserved bits */
	u32 v1_reserved;	/* value of bits 3-31 this device reports */
	void *v1_buf;		/* data section, chunk_size, vmalloc_user */
	u32 v1_buf_size;
	bool v1_staged;		/* a record was handed out via data_offset */
	u32 v1_staged_len;
	u64 v1_data_size;	/* last data_size written while resuming */

	/* v2 */
	enum vfio_device_mig_state v2_state;
	u32 arc_delay_us;	/* knob: every v2 arc takes this long (firmware time) */
	struct vmt_migf *saving_migf;
	struct vmt_migf *resuming_migf;

	/* device DMA logging (vmt_dma.c) */
	bool log_active;
	u64 log_page;		/* negotiated page size */
	u64 log_page_size;	/* knob: 0 follows the request */
	u32 log_nranges;
	struct vmt_log_range *log_ranges;

	/* one-shot fault, armed through sysfs */
	spinlock_t fault_lock;
	int fault_point;	/* -1 when none */
	int fault_errno;
	bool fault_error;

	/* deliberate spec violation (enum vmt_bug), -1 when none */
	int bug;
	u64 bug_tick;

	atomic64_t counters[VMT_C_NR];
};

static inline bool vmt_bug(struct vmt_dev *d, enum vmt_bug b)
{
	return READ_ONCE(d->bug) == b;
}

static inline void vmt_count(struct vmt_dev *d, enum vmt_counter c)
{
	atomic64_inc(&d->counters[c]);
}

static inline void vmt_count_add(struct vmt_dev *d, enum vmt_counter c, u64 n)
{
	atomic64_add(n, &d->counters[c]);
}

/* live allocation accounting (module parameter live_allocs) */
extern atomic_long_t vmt_live_allocs;
void *vmt_kzalloc(size_t size);
void vmt_kfree(const void *p);
void *vmt_kvzalloc(size_t size);
void vmt_kvfree(const void *p);

/* vmt_main.c */
int vmt_fault(struct vmt_dev *d, enum vmt_fault_point fp, bool *enter_error);
bool vmt_fault_applies(struct vmt_dev *d, enum vmt_fault_point fp);
void vmt_enter_error(struct vmt_dev *d);

/* vmt_state.c */
int vmt_state_init(void);
void vmt_state_exit(void);
u64 vmt_npages(u64 state_size);
void vmt_state_free_all(struct vmt_dev *d);
int vmt_state_resize(struct vmt_dev *d, u64 new_size);
u64 vmt_state_checksum(struct vmt_dev *d);
int vmt_state_mutate(struct vmt_dev *d, u64 seed);
bool vmt_dev_running(struct vmt_dev *d);
void vmt_dirty_work_fn(struct work_struct *work);
void vmt_dirty_kick(struct vmt_dev *d);
int vmt_save_start(struct vmt_dev *d, bool stopped, u16 rec_flags);
void vmt_save_end(struct vmt_dev *d);
ssize_t vmt_save_build(struct vmt_dev *d, u8 *buf, size_t cap, bool *rec_init);
void vmt_save_estimate(struct vmt_dev *d, u64 *init_bytes, u64 *dirty_bytes);
u64 vmt_save_pending(struct vmt_dev *d);
u64 vmt_full_estimate(struct vmt_dev *d);
void vmt_load_start(struct vmt_dev *d, u16 rec_flags);
void vmt_load_end(struct vmt_dev *d);
int vmt_load_record(struct vmt_dev *d, const u8 *buf, size_t len);

/* vmt_v1.c */
ssize_t vmt_v1_rw(struct vmt_dev *d, char __user *buf, size_t count,
		  u64 off, bool write);
int vmt_v1_mmap(struct vmt_dev *d, struct vm_area_struct *vma, u64 off);
int vmt_v1_region_info(struct vmt_dev *d, struct vfio_region_info *info,
		       struct vfio_info_cap *caps);
void vmt_v1_reset(struct vmt_dev *d);
void vmt_v1_enter_error(struct vmt_dev *d);
int vmt_v1_open(struct vmt_dev *d);
void vmt_v1_close(struct vmt_dev *d);
bool vmt_v1_running(struct vmt_dev *d);

/* vmt_v2.c */
extern const struct vfio_migration_ops vmt_v2_mig_ops;
void vmt_v2_reset(struct vmt_dev *d);
void vmt_v2_enter_error(struct vmt_dev *d);
void vmt_v2_close(struct vmt_dev *d);
bool vmt_v2_running(struct vmt_dev *d);
void vmt_v2_wake(struct vmt_dev *d);

/* vmt_dma.c */
extern const struct vfio_log_ops vmt_log_ops;
void vmt_log_close(struct vmt_dev *d);
extern struct device_attribute dev_attr_dma_write;
extern struct device_attribute dev_attr_dma_log;
extern struct device_attribute dev_attr_log_page_size;

#endif /* VMT_H */
