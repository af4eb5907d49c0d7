//! The M88E1011 PHY behind MDIC: MII and Marvell registers, link always
//! 1000 Mb/s full duplex, autonegotiation complete as soon as it starts.

use super::{
    E1000, ICR_MDAC, MDIC_ERROR, MDIC_INT_EN, MDIC_OP_READ, MDIC_OP_WRITE, MDIC_PHY_SHIFT,
    MDIC_READY, MDIC_REG_SHIFT,
};

pub const CTRL: usize = 0;
pub const STATUS: usize = 1;
pub const ID1: usize = 2;
pub const ID2: usize = 3;
pub const AUTONEG_ADV: usize = 4;
pub const LP_ABILITY: usize = 5;
pub const AUTONEG_EXP: usize = 6;
pub const CTRL_1000T: usize = 9;
pub const STATUS_1000T: usize = 10;
pub const EXT_STATUS: usize = 15;
pub const M88_SPEC_CTRL: usize = 0x10;
pub const M88_SPEC_STATUS: usize = 0x11;
pub const M88_EXT_SPEC_CTRL: usize = 0x14;
pub const M88_RX_ERR_CNTR: usize = 0x15;

pub const CTRL_RESTART_AUTONEG: u16 = 1 << 9;
pub const CTRL_RESET: u16 = 1 << 15;
pub const STATUS_LINK: u16 = 1 << 2;
pub const STATUS_AUTONEG_COMPLETE: u16 = 1 << 5;
/// M88E1011 (PHY_ID1 << 16 | PHY_ID2), revision 0.
pub const M88E1011_ID: u32 = 0x0141_0c20;
/// The PHY's address on the MDIO bus.
pub const ADDRESS: u32 = 1;

/// PHY register values after a PHY reset: 1000 Mb/s full duplex with
/// autonegotiation on and (there being no wire) already complete.
pub(super) fn defaults() -> [u16; 32] {
    let mut p = [0u16; 32];
    p[CTRL] = 0x1140; // autoneg enable, full duplex, 1000 Mb/s
    // Extended capabilities, link, autoneg ability and complete,
    // preamble suppression, extended status, 10/100 half/full.
    p[STATUS] = 0x796d;
    p[ID1] = (M88E1011_ID >> 16) as u16;
    p[ID2] = M88E1011_ID as u16;
    // Selector CSMA/CD, 10/100 half/full, pause, asymmetric pause.
    p[AUTONEG_ADV] = 0x0de1;
    // Partner: 10/100 half/full, acknowledged.
    p[LP_ABILITY] = 0x41e0;
    // The partner is autonegotiation-able.
    p[AUTONEG_EXP] = 0x0001;
    // Advertise 1000 full; manual master, as QEMU's PHY.
    p[CTRL_1000T] = 0x0e00;
    // Partner 1000 half/full, local and remote receivers OK.
    p[STATUS_1000T] = 0x3c00;
    p[EXT_STATUS] = 0x3000;
    p[M88_SPEC_CTRL] = 0x0360;
    // 1000 Mb/s, full duplex, resolved, link up.
    p[M88_SPEC_STATUS] = 0xac00;
    p[M88_EXT_SPEC_CTRL] = 0x0d60;
    p
}

/// PHY registers the driver cannot change.
fn read_only(r: usize) -> bool {
    matches!(
        r,
        STATUS
            | ID1
            | ID2
            | LP_ABILITY
            | AUTONEG_EXP
            | STATUS_1000T
            | EXT_STATUS
            | M88_SPEC_STATUS
            | M88_RX_ERR_CNTR
    )
}

impl E1000 {
    pub(super) fn apply_link_to_phy(&mut self) {
        if self.link_up {
            self.phy[STATUS] |= STATUS_LINK | STATUS_AUTONEG_COMPLETE;
            self.phy[M88_SPEC_STATUS] |= 0x0400;
        } else {
            self.phy[STATUS] &= !(STATUS_LINK | STATUS_AUTONEG_COMPLETE);
            self.phy[M88_SPEC_STATUS] &= !0x0400;
        }
    }

    pub(super) fn reset_phy(&mut self) {
        self.phy = defaults();
        self.apply_link_to_phy();
    }

    pub(super) fn mdic_write(&mut self, v: u32) {
        let data = (v & 0xffff) as u16;
        let r = ((v >> MDIC_REG_SHIFT) & 0x1f) as usize;
        let addr = (v >> MDIC_PHY_SHIFT) & 0x1f;
        let op = v & (3 << 26);
        let mut result = v;
        if addr != ADDRESS {
            // Nothing else on the bus answers.
            result |= MDIC_ERROR;
        } else if op == MDIC_OP_READ {
            result = (v & !0xffff) | u32::from(self.phy[r]);
        } else if op == MDIC_OP_WRITE {
            self.phy_write(r, data);
        } else {
            result |= MDIC_ERROR;
        }
        self.mdic = result | MDIC_READY;
        if v & MDIC_INT_EN != 0 {
            self.raise(ICR_MDAC);
        }
    }

    fn phy_write(&mut self, r: usize, data: u16) {
        if read_only(r) {
            return;
        }
        if r == CTRL {
            // Reset and restart are self-clearing; bits 5:0 reserved. A
            // software reset keeps the configuration registers (drivers
            // write them, then reset "so the changes take effect"), and
            // autonegotiation completes at once: there is no wire.
            self.phy[CTRL] = data & !(CTRL_RESET | CTRL_RESTART_AUTONEG | 0x3f);
            self.apply_link_to_phy();
            return;
        }
        self.phy[r] = data;
    }
}
