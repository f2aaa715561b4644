/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * vfio_mig_edu: a vfio-pci variant driver for QEMU's edu device (PCI
 * 1234:11e8) with v2 migration. Shared declarations.
 */
#ifndef EDU_H
#define EDU_H

#include <linux/bits.h>
#include <linux/types.h>
#include <linux/mutex.h>
#include <linux/vfio.h>
#include <linux/vfio_pci_core.h>
#include <linux/version.h>
#include <linux/xarray.h>

#define EDU_NAME "vfio_mig_edu"

#ifdef VFIO_MIGRATION_PRE_COPY
#define EDU_HAVE_PRECOPY 1
#else
#define EDU_HAVE_PRECOPY 0
#endif

/* vfio_migration_ops.migration_get_data_size appeared in 6.2 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
#define EDU_HAVE_DATA_SIZE 1
#else
#define EDU_HAVE_DATA_SIZE 0
#endif

/* BAR0 registers of QEMU's hw/misc/edu.c */
#define EDU_REG_IDENT		0x00
#define EDU_REG_LIVENESS	0x04
#define EDU_REG_FACT		0x08
#define EDU_REG_STATUS		0x20
#define EDU_REG_IRQ_STATUS	0x24
#define EDU_REG_IRQ_RAISE	0x60
#define EDU_REG_IRQ_ACK		0x64
#define EDU_REG_DMA_SRC		0x80
#define EDU_REG_DMA_DST		0x88
#define EDU_REG_DMA_CNT		0x90
#define EDU_REG_DMA_CMD		0x98

#define EDU_STATUS_COMPUTING	0x01
#define EDU_STATUS_IRQFACT	0x80
#define EDU_CMD_RUN		0x1
#define EDU_CMD_TO_RAM		0x2
#define EDU_CMD_IRQ		0x4
#define EDU_IRQ_DMA		0x100

/* the device's internal buffer, reachable only by its own DMA */
#define EDU_BUF_ADDR		0x40000
#define EDU_BUF_SIZE		4096
/*
 * QEMU 7.2's edu aborts QEMU (hw_error) on a DMA whose end is not strictly
 * inside the buffer, or of 0 bytes: its last byte is out of any DMA's reach.
 */
#define EDU_BUF_REACH		(EDU_BUF_SIZE - 1)
/* edu's default dma_mask is 28 bits: its DMA addresses stay below 256 MiB */
#define EDU_DMA_LIMIT		BIT_ULL(28)

/*
 * The migration stream: a preamble (sent in PRE_COPY, before the device
 * stops: the destination can tell early whether the stream is for it), a
 * header of our own, then the payload.
 */
#define EDU_PREAMBLE_MAGIC	0x50554445	/* "EDUP" */
#define EDU_STREAM_MAGIC	0x4d554445	/* "EDUM" */
#define EDU_STREAM_VERSION	1

struct edu_preamble {
	__le32 magic;
	__le16 version;
	__le16 size;
	__le32 ident;		/* the device's identification register */
	__le32 reserved;
};

struct edu_stream_hdr {
	__le32 magic;
	__le16 version;
	__le16 hdr_size;
	__le32 length;		/* payload bytes after the header */
	__le32 crc;		/* crc32_le of the payload */
};

struct edu_regs {
	__le32 fact;
	__le32 liveness;	/* the value reads of 0x04 return */
	__le32 status;		/* only EDU_STATUS_IRQFACT: COMPUTING is never saved */
	__le32 irq_status;
	__le64 dma_src;
	__le64 dma_dst;
	__le64 dma_cnt;
	__le64 dma_cmd;		/* EDU_CMD_RUN is never saved */
};

struct edu_payload {
	struct edu_regs regs;
	u8 buf[EDU_BUF_REACH];
} __packed;

#define EDU_STREAM_SIZE (sizeof(struct edu_preamble) + \
			 sizeof(struct edu_stream_hdr) + \
			 sizeof(struct edu_payload))

struct edu_migf;
struct edu_log_range;

struct edu_dev {
	struct vfio_pci_core_device core;
	/* serialises the migration FSM, the data fds and BAR0 writes */
	struct mutex state_mutex;
	enum vfio_device_mig_state mig_state;
	void __iomem *bar;
	struct edu_migf *saving_migf;
	struct edu_migf *resuming_migf;
	/* device DMA logging, under state_mutex */
	bool log_active;
	bool log_overflow;
	struct edu_log_range *log_ranges;
	u32 log_nranges;
	struct xarray log_dirty;	/* IOVA page numbers the device wrote */
};

/* edu_hw.c: the device itself */
int edu_hw_capture(struct edu_dev *e, struct edu_payload *p);
int edu_hw_restore(struct edu_dev *e, const struct edu_payload *p);
int edu_hw_reset(struct edu_dev *e);
u32 edu_hw_ident(struct edu_dev *e);
int edu_hw_check_cmd(struct edu_dev *e, u64 cmd, u64 *ram_dst, u64 *ram_len);

/* edu_mig.c: v2 migration */
extern const struct vfio_migration_ops edu_mig_ops;
void edu_mig_reset(struct edu_dev *e);
int edu_stream_check(const u8 *data, size_t len, u32 ident);

/* edu_log.c: device DMA logging */
extern const struct vfio_log_ops edu_log_ops;
void edu_log_close(struct edu_dev *e);
void edu_log_mark(struct edu_dev *e, u64 iova, u64 len);

#endif
