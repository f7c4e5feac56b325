//! How the SnapshotMetadata service describes byte ranges: variable-length
//! extents as the backend finds them, or fixed-length blocks covering them
//! (a setting of the driver, `--metadata-block-size`).

use crate::backend::blocks::Extent;
use crate::csi::BlockMetadataType;

/// Smallest and largest fixed block size: powers of two in between, so
/// that blocks tile every volume size of MiB steps.
pub const MIN_BLOCK: u64 = 4096;
pub const MAX_BLOCK: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockStyle {
    /// Extents of any length (VARIABLE_LENGTH).
    Variable,
    /// Blocks of this many bytes (FIXED_LENGTH).
    Fixed(u64),
}

impl BlockStyle {
    /// The style a `--metadata-block-size` selects: 0 is variable-length.
    pub fn from_size(bytes: u64) -> Result<Self, String> {
        if bytes == 0 {
            return Ok(BlockStyle::Variable);
        }
        if !bytes.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&bytes) {
            return Err(format!(
                "metadata block size {bytes}: use 0 (variable-length extents) or a power of two from {MIN_BLOCK} to {MAX_BLOCK} bytes"
            ));
        }
        Ok(BlockStyle::Fixed(bytes))
    }

    pub fn wire_type(self) -> BlockMetadataType {
        match self {
            BlockStyle::Variable => BlockMetadataType::VariableLength,
            BlockStyle::Fixed(_) => BlockMetadataType::FixedLength,
        }
    }
}

/// Turns the ascending extents of a stream into the tuples of one style,
/// none ending at or before the requested starting offset and no block
/// given twice.
pub struct Shaper {
    style: BlockStyle,
    /// Everything before this is given (or was not asked for).
    covered: u64,
}

impl Shaper {
    pub fn new(style: BlockStyle, starting_offset: u64) -> Self {
        let covered = match style {
            BlockStyle::Variable => starting_offset,
            BlockStyle::Fixed(size) => starting_offset - starting_offset % size,
        };
        Shaper { style, covered }
    }

    /// The tuples `(byte_offset, size_bytes)` that describe `extent`.
    pub fn tuples(&mut self, extent: Extent) -> impl Iterator<Item = (u64, u64)> + use<> {
        let end = extent.end();
        let (first, last, step) = match self.style {
            BlockStyle::Variable => {
                // An extent reaching past the starting offset is given whole.
                let first = if end > self.covered {
                    extent.offset
                } else {
                    end
                };
                (first, end, extent.length.max(1))
            }
            BlockStyle::Fixed(size) => {
                let first = (extent.offset - extent.offset % size).max(self.covered);
                (first, end.div_ceil(size) * size, size)
            }
        };
        self.covered = self.covered.max(last);
        (first..last)
            .step_by(step as usize)
            .map(move |offset| (offset, step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(style: BlockStyle, from: u64, extents: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut shaper = Shaper::new(style, from);
        extents
            .iter()
            .flat_map(|&(offset, length)| {
                shaper.tuples(Extent { offset, length }).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn variable_extents_pass_whole() {
        let extents = [(0, 4096), (8192, 12288)];
        assert_eq!(shape(BlockStyle::Variable, 0, &extents), extents.to_vec());
        // An extent ending at the starting offset is left out, one
        // reaching past it is given.
        assert_eq!(
            shape(BlockStyle::Variable, 4096, &extents),
            vec![(8192, 12288)]
        );
        assert_eq!(
            shape(BlockStyle::Variable, 9000, &extents),
            vec![(8192, 12288)]
        );
    }

    #[test]
    fn fixed_blocks_cover_each_extent_once() {
        let style = BlockStyle::Fixed(65536);
        // Two extents in one block give it once; a long one several.
        let extents = [(4096, 4096), (12288, 4096), (65536 + 100, 3 * 65536)];
        assert_eq!(
            shape(style, 0, &extents),
            vec![
                (0, 65536),
                (65536, 65536),
                (131072, 65536),
                (196608, 65536),
                (262144, 65536)
            ]
        );
        // From inside the third block on.
        assert_eq!(
            shape(style, 140000, &extents),
            vec![(131072, 65536), (196608, 65536), (262144, 65536)]
        );
    }

    #[test]
    fn block_sizes_are_checked() {
        assert_eq!(BlockStyle::from_size(0), Ok(BlockStyle::Variable));
        assert_eq!(BlockStyle::from_size(65536), Ok(BlockStyle::Fixed(65536)));
        for bad in [512, 5000, 2 << 20] {
            assert!(
                BlockStyle::from_size(bad)
                    .unwrap_err()
                    .contains("power of two")
            );
        }
    }
}
