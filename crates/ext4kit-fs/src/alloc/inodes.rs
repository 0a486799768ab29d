//! Inodes: the inode bitmap (built for groups never initialised), allocation near the parent
//! (directories spread over the groups), the checks that keep a
//! damaged bitmap from handing out a live inode, and freeing.

use std::sync::Arc;

use ext4kit_format::Structure;
use ext4kit_format::bitmap;
use ext4kit_format::group_desc::GroupFlags;
use ext4kit_format::inode::Inode;

use crate::alloc::MetaState;
use crate::alloc::blocks::no_space;
use crate::error::{Corruption, Error, Result, ResultExt};
use crate::fs::Core;
use crate::metacache::MetaBlock;

impl MetaState {
    /// The inode bitmap of group `g`, built first if the group was never initialised.
    fn inode_bitmap(&mut self, core: &Core, g: u32) -> Result<Arc<MetaBlock>> {
        let gd = &self.groups[g as usize];
        let loc = gd.inode_bitmap();
        if !gd.flags().contains(GroupFlags::INODE_UNINIT) {
            return core.cache.get(loc).ctx_group(g);
        }
        let bs = self.sb.block_size() as usize;
        let mut bits = vec![0u8; bs];
        bitmap::mark_padding(&mut bits, self.ipg() as usize);
        let blk = core.cache.get_new(loc);
        blk.write().copy_from_slice(&bits);
        blk.mark_dirty();
        let gd = &mut self.groups[g as usize];
        let mut f = gd.flags();
        f.remove(GroupFlags::INODE_UNINIT);
        gd.set_flags(f);
        self.mark_group(g);
        Ok(blk)
    }

    /// Allocates an inode near `parent` (directories spread over groups). Returns its number.
    pub(crate) fn alloc_inode(&mut self, core: &Core, parent: u32, is_dir: bool) -> Result<u32> {
        let ngroups = self.groups.len() as u32;
        let ipg = self.ipg();
        let parent_group = (parent.saturating_sub(1)) / ipg;
        let start = if is_dir {
            // Next group (by flex group) with free inodes and blocks above average.
            let flex = 1u32 << self.sb.log_groups_per_flex().min(16);
            let avg_inodes = self.free_inodes() / u64::from(ngroups);
            let mut pick = parent_group;
            for k in 0..ngroups {
                let g = (self.next_dir_group + k * flex) % ngroups;
                if u64::from(self.groups[g as usize].free_inodes_count()) >= avg_inodes.max(1) {
                    pick = g;
                    break;
                }
            }
            self.next_dir_group = (pick + flex) % ngroups;
            pick
        } else {
            parent_group
        };
        for k in 0..ngroups {
            let g = (start + k) % ngroups;
            if self.groups[g as usize].free_inodes_count() == 0 {
                continue;
            }
            let bm = self.inode_bitmap(core, g)?;
            let first_allowed = if g == 0 {
                self.sb.first_ino().saturating_sub(1) as usize
            } else {
                0
            };
            let bit = bitmap::find_first_zero(&bm.read(), first_allowed, ipg as usize);
            let Some(bit) = bit else { continue };
            self.check_free_slot(core, g, bit as u32)?;
            bitmap::set(&mut bm.write(), bit);
            bm.mark_dirty();
            let ino = g * ipg + bit as u32 + 1;
            self.expose_inode_slot(core, g, bit as u32)?;
            let gd = &mut self.groups[g as usize];
            gd.set_free_inodes_count(gd.free_inodes_count().saturating_sub(1))
                .map_err(Error::from)?;
            if is_dir {
                gd.set_used_dirs_count(gd.used_dirs_count() + 1)
                    .map_err(Error::from)?;
            }
            self.mark_group(g);
            return Ok(ino);
        }
        Err(no_space("no free inodes"))
    }

    /// Refuses to hand out slot `bit` of group `g` when the inode bitmap calls it free but the
    /// inode there is plainly in use (a file type, links, no deletion time): a damaged bitmap,
    /// and a second file on that inode would destroy the first. Slots in a table's never-used
    /// tail (`itable_unused`) are not looked at.
    fn check_free_slot(&self, core: &Core, g: u32, bit: u32) -> Result<()> {
        let ipg = self.ipg();
        let ino = g * ipg + bit + 1;
        let (mode, links, dtime) = if let Some(i) = self.inodes.get(&ino) {
            (i.mode(), i.links_count(), i.dtime())
        } else {
            let gd = &self.groups[g as usize];
            if self.sb.has_group_desc_csum()
                && (gd.flags().contains(GroupFlags::INODE_UNINIT)
                    || bit >= ipg - gd.itable_unused().min(ipg))
            {
                return Ok(());
            }
            let (isz, bs) = (
                u64::from(self.sb.inode_size()),
                u64::from(self.sb.block_size()),
            );
            let off = u64::from(bit) * isz;
            let blk = core.cache.get(gd.inode_table() + off / bs).ctx_group(g)?;
            let raw = blk.read();
            let o = (off % bs) as usize;
            // The record as it is on disk, unvalidated: only a few fields are looked at.
            let Some(rec) = raw
                .get(o..o + isz as usize)
                .and_then(|r| Inode::from_bytes_unchecked(r).ok())
            else {
                return Ok(());
            };
            (rec.mode(), rec.links_count(), rec.dtime())
        };
        if mode & 0o170000 != 0 && links != 0 && dtime == 0 {
            return Err(Error::corrupt(
                Structure::InodeBitmap,
                Corruption::LiveInodeMarkedFree { ino, links },
            )
            .with_group(g));
        }
        Ok(())
    }

    /// Lowers `itable_unused` so that slot `bit` of group `g` is inside the used part, zeroing
    /// the newly exposed slots of a table that was never zeroed.
    fn expose_inode_slot(&mut self, core: &Core, g: u32, bit: u32) -> Result<()> {
        if !self.sb.has_group_desc_csum() {
            return Ok(());
        }
        let ipg = self.ipg();
        let gd = &self.groups[g as usize];
        let used = ipg - gd.itable_unused().min(ipg);
        if bit < used {
            return Ok(());
        }
        if !gd.flags().contains(GroupFlags::ITABLE_ZEROED) {
            let isz = u64::from(self.sb.inode_size());
            let bs = u64::from(self.sb.block_size());
            let table = gd.inode_table();
            for slot in used..=bit {
                let off = u64::from(slot) * isz;
                let blk = core.cache.get(table + off / bs).ctx_group(g)?;
                let o = (off % bs) as usize;
                blk.write()[o..o + isz as usize].fill(0);
                blk.mark_dirty();
            }
        }
        let gd = &mut self.groups[g as usize];
        gd.set_itable_unused(ipg - bit - 1).map_err(Error::from)?;
        self.mark_group(g);
        Ok(())
    }

    /// Frees inode `ino` (its blocks must already be freed).
    pub(crate) fn free_inode(&mut self, core: &Core, ino: u32, was_dir: bool) -> Result<()> {
        let ipg = self.ipg();
        let g = (ino - 1) / ipg;
        let bit = (ino - 1) % ipg;
        let bm = self.inode_bitmap(core, g)?;
        bitmap::clear(&mut bm.write(), bit as usize);
        bm.mark_dirty();
        let gd = &mut self.groups[g as usize];
        gd.set_free_inodes_count((gd.free_inodes_count() + 1).min(ipg))
            .map_err(Error::from)?;
        if was_dir {
            gd.set_used_dirs_count(gd.used_dirs_count().saturating_sub(1))
                .map_err(Error::from)?;
        }
        self.mark_group(g);
        Ok(())
    }
}
