//! The bias lab's data: seeded RGB images whose class is a shape, with two spurious cues,
//! the foreground colour (cue 1) and the background texture (cue 2), each of which has one
//! value per class.
//!
//! A training image's cue agrees with its class with probability rho (one Bernoulli draw per
//! cue, the two independent); otherwise the cue takes one of the K - 1 other values, uniformly.
//! The validation and test splits draw the same way with rho = 1/K, so each cue is uniform
//! over its K values and independent of the class (balanced splits). Sample i of every split
//! has class i mod K, so the classes are exactly balanced.
//!
//! Pixels are f32 in [0, 1] (not normalised): shape pixels carry the cue-1 colour, the others
//! the cue-2 texture in two greys, then every channel gets noise N(0, noise^2) (Irwin-Hall,
//! the sum of 4 uniforms) and is clamped to [0, 1]. Images are (N, C, S, S) row-major, C = 3.
//!
//! Every target draws the same bits: ChaCha8 with one key from the seed and one stream per
//! (split, sample), and only exact integer-to-float conversions, +, -, *, / and comparisons
//! (the rotation's sine and cosine are Taylor polynomials, not libm's), so the page, the CLI
//! and the tests are handed the same data by a seed.

use std::collections::BTreeMap;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::SebraOptions;
use crate::error::Result;
use crate::io::safetensors::{write_tensors, TensorValues, TypedTensor};

/// C: images are RGB.
pub const CHANNELS: usize = 3;
/// The shape's circumradius is S x (RADIUS_MIN + RADIUS_SPAN x u), u uniform in [0, 1).
pub const RADIUS_MIN: f64 = 0.22;
pub const RADIUS_SPAN: f64 = 0.12;
/// Rotations are uniform in [-MAX_ANGLE, MAX_ANGLE] radians (15 degrees): small enough that
/// a square never looks like a diamond (a square turned by 45 degrees).
pub const MAX_ANGLE: f64 = 0.261_799_387_799_149_4;
/// The texture's two grey levels; the palette's colours are all far from both.
pub const TEXTURE_LO: f32 = 0.25;
pub const TEXTURE_HI: f32 = 0.55;

/// The class: a shape in unit coordinates (its circumradius is 1), turned and scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Disc,
    Square,
    Triangle,
    Cross,
    Ring,
    Diamond,
    Frame,
    Bar,
}

impl Shape {
    /// Class k is `Shape::ALL[k]`.
    pub const ALL: [Shape; 8] = [
        Shape::Disc,
        Shape::Square,
        Shape::Triangle,
        Shape::Cross,
        Shape::Ring,
        Shape::Diamond,
        Shape::Frame,
        Shape::Bar,
    ];

    /// Whether the point (u, v) of the shape's own frame (v points down, as image rows do;
    /// both in units of the circumradius) is inside.
    pub fn contains(self, u: f64, v: f64) -> bool {
        let (au, av) = (u.abs(), v.abs());
        match self {
            Shape::Disc => u * u + v * v <= 1.0,
            Shape::Square => au <= 0.7 && av <= 0.7,
            // Equilateral, apex up: vertices (0, -1), (+-sqrt(3)/2, 1/2).
            Shape::Triangle => v <= 0.5 && v >= SQRT_3 * au - 1.0,
            // A plus sign: two bars of half-length 0.9 and half-width 0.3.
            Shape::Cross => (au <= 0.3 && av <= 0.9) || (av <= 0.3 && au <= 0.9),
            Shape::Ring => {
                let r2 = u * u + v * v;
                (0.3025..=1.0).contains(&r2)
            }
            Shape::Diamond => au + av <= 1.0,
            Shape::Frame => {
                let m = au.max(av);
                (0.4..=0.7).contains(&m)
            }
            Shape::Bar => au <= 0.95 && av <= 0.3,
        }
    }

    /// The shape's area in units of the circumradius squared (its formula, independent of
    /// `contains`; the tests compare the two).
    pub fn unit_area(self) -> f64 {
        match self {
            Shape::Disc => std::f64::consts::PI,
            Shape::Square => 4.0 * 0.7 * 0.7,
            Shape::Triangle => 3.0 * SQRT_3 / 4.0,
            Shape::Cross => 2.0 * (1.8 * 0.6) - 0.6 * 0.6,
            Shape::Ring => std::f64::consts::PI * (1.0 - 0.55 * 0.55),
            Shape::Diamond => 2.0,
            Shape::Frame => 1.4 * 1.4 - 0.8 * 0.8,
            Shape::Bar => 1.9 * 0.6,
        }
    }
}

const SQRT_3: f64 = 1.732_050_807_568_877_2;

/// Cue 1: value k is `PALETTE[k]`, an RGB colour in [0, 1] (red, green, blue, yellow,
/// magenta, cyan, orange, white).
pub const PALETTE: [[f32; 3]; 8] = [
    [0.90, 0.15, 0.15],
    [0.15, 0.80, 0.20],
    [0.20, 0.35, 0.95],
    [0.95, 0.85, 0.15],
    [0.85, 0.20, 0.85],
    [0.15, 0.85, 0.85],
    [0.95, 0.55, 0.10],
    [0.95, 0.95, 0.95],
];
pub const COLOUR_NAMES: [&str; 8] = [
    "red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white",
];

/// Cue 2: value k is `Texture::ALL[k]`, drawn in two greys at a random phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Texture {
    /// Stripes two pixels wide at 0, 90, 45 and 135 degrees.
    StripesHorizontal,
    StripesVertical,
    StripesDiagonal,
    StripesAntidiagonal,
    /// 2 x 2 squares alternating.
    Checker,
    /// 2 x 2 dots every 5 pixels.
    Dots,
    /// One-pixel lines every 5 pixels both ways.
    Grid,
    /// Flat (the noise only).
    Plain,
}

impl Texture {
    pub const ALL: [Texture; 8] = [
        Texture::StripesHorizontal,
        Texture::StripesVertical,
        Texture::StripesDiagonal,
        Texture::StripesAntidiagonal,
        Texture::Checker,
        Texture::Dots,
        Texture::Grid,
        Texture::Plain,
    ];

    /// Whether pixel (x, y) shows the light grey, with the pattern shifted by (ox, oy)
    /// (both < `PHASES`, which every period divides). `side` is S.
    pub fn is_light(self, x: usize, y: usize, ox: usize, oy: usize, side: usize) -> bool {
        let (xs, ys) = (x + ox, y + oy);
        match self {
            Texture::StripesHorizontal => (ys / 2) % 2 == 1,
            Texture::StripesVertical => (xs / 2) % 2 == 1,
            Texture::StripesDiagonal => ((xs + y) / 2) % 2 == 1,
            // x - y + side is never negative; its stripes run at 135 degrees.
            Texture::StripesAntidiagonal => ((xs + side - y) / 2) % 2 == 1,
            Texture::Checker => (xs / 2 + ys / 2) % 2 == 1,
            Texture::Dots => xs % 5 < 2 && ys % 5 < 2,
            Texture::Grid => xs % 5 == 0 || ys % 5 == 0,
            Texture::Plain => false,
        }
    }
}

/// The texture's phase is drawn in [0, PHASES)^2: 20 is a multiple of every period (4, 5).
pub const PHASES: usize = 20;

/// Which cues agree with a sample's class. The discriminant is the true spuriosity order
/// that tau scores Sebra's ranking against: both cues aligned first (most spurious), none
/// last, and "only the colour" before "only the texture" (UrbanCars' order with the colour
/// as its first cue, the background).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    BothAligned = 0,
    ColourAligned = 1,
    TextureAligned = 2,
    NoneAligned = 3,
}

impl Group {
    pub const ALL: [Group; 4] = [
        Group::BothAligned,
        Group::ColourAligned,
        Group::TextureAligned,
        Group::NoneAligned,
    ];

    pub fn of(class: u32, cue1: u32, cue2: u32) -> Group {
        match (cue1 == class, cue2 == class) {
            (true, true) => Group::BothAligned,
            (true, false) => Group::ColourAligned,
            (false, true) => Group::TextureAligned,
            (false, false) => Group::NoneAligned,
        }
    }

    /// 0 (both cues aligned) .. 3 (none).
    pub fn order(self) -> u32 {
        self as u32
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitKind {
    Train,
    Val,
    Test,
}

impl SplitKind {
    pub fn name(self) -> &'static str {
        match self {
            SplitKind::Train => "train",
            SplitKind::Val => "val",
            SplitKind::Test => "test",
        }
    }
}

/// Where a sample's shape was drawn, in pixels (x right, y down; pixel (x, y) covers
/// [x, x+1) x [y, y+1)), and the texture's phase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    pub cx: f64,
    pub cy: f64,
    /// The circumradius.
    pub radius: f64,
    /// Radians, clockwise on screen (y points down).
    pub angle: f64,
    pub phase: (usize, usize),
}

/// One split: N images of 3 x S x S and, per sample, its class and both cue values.
#[derive(Clone, Debug)]
pub struct Split {
    pub kind: SplitKind,
    /// S.
    pub side: usize,
    /// (N, C, S, S) row-major, in [0, 1].
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub cue1: Vec<u32>,
    pub cue2: Vec<u32>,
    pub placements: Vec<Placement>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Sample i's pixels, (C, S, S).
    pub fn image(&self, i: usize) -> &[f32] {
        let n = CHANNELS * self.side * self.side;
        &self.images[i * n..(i + 1) * n]
    }

    pub fn group(&self, i: usize) -> Group {
        Group::of(self.labels[i], self.cue1[i], self.cue2[i])
    }

    pub fn groups(&self) -> Vec<Group> {
        (0..self.len()).map(|i| self.group(i)).collect()
    }
}

/// The three splits of one run.
#[derive(Clone, Debug)]
pub struct SebraData {
    pub train: Split,
    pub val: Split,
    pub test: Split,
}

/// Generates the three splits the options describe (checked first).
pub fn generate(opts: &SebraOptions) -> Result<SebraData> {
    opts.check()?;
    Ok(SebraData {
        train: generate_split(opts, SplitKind::Train),
        val: generate_split(opts, SplitKind::Val),
        test: generate_split(opts, SplitKind::Test),
    })
}

/// One split; `opts` must have passed `check` (sizes are trusted here).
pub fn generate_split(opts: &SebraOptions, kind: SplitKind) -> Split {
    let k = opts.classes;
    let (per_class, rho) = match kind {
        SplitKind::Train => (opts.train_per_class, opts.bias),
        SplitKind::Val => (opts.val_per_class, (1.0 / k as f64, 1.0 / k as f64)),
        SplitKind::Test => (opts.test_per_class, (1.0 / k as f64, 1.0 / k as f64)),
    };
    let n = k * per_class;
    let side = opts.image;
    let pixels = CHANNELS * side * side;
    let mut images = vec![0f32; n * pixels];
    let drawn: Vec<(u32, u32, u32, Placement)> = images
        .par_chunks_mut(pixels)
        .enumerate()
        .map(|(i, image)| {
            let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
            rng.set_stream(((kind as u64) << 32) | i as u64);
            draw_sample(&mut rng, i, k, rho, side, opts.noise, image)
        })
        .collect();
    let mut split = Split {
        kind,
        side,
        images,
        labels: Vec::with_capacity(n),
        cue1: Vec::with_capacity(n),
        cue2: Vec::with_capacity(n),
        placements: Vec::with_capacity(n),
    };
    for (label, c1, c2, placement) in drawn {
        split.labels.push(label);
        split.cue1.push(c1);
        split.cue2.push(c2);
        split.placements.push(placement);
    }
    split
}

/// Uniform in [0, 1) from 53 random bits (exact in f64).
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
}

/// A cue value: the class with probability rho, else one of the other K - 1 uniformly.
fn draw_cue(rng: &mut ChaCha8Rng, class: u32, k: usize, rho: f64) -> u32 {
    if unit(rng) < rho {
        return class;
    }
    let other = super::ranking::uniform_below(rng, k - 1) as u32;
    if other >= class {
        other + 1
    } else {
        other
    }
}

/// sin and cos by their Taylor series to x^10 (|x| <= 15 degrees: error < 1e-12), exact
/// operations only, so every target agrees to the bit.
fn sin_cos(x: f64) -> (f64, f64) {
    let x2 = x * x;
    let sin = x * (1.0 - x2 / 6.0 * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0 * (1.0 - x2 / 72.0))));
    let cos = 1.0
        - x2 / 2.0 * (1.0 - x2 / 12.0 * (1.0 - x2 / 30.0 * (1.0 - x2 / 56.0 * (1.0 - x2 / 90.0))));
    (sin, cos)
}

/// Draws sample i into `image` (C, S, S): its class, cues, placement, then its pixels.
fn draw_sample(
    rng: &mut ChaCha8Rng,
    i: usize,
    k: usize,
    rho: (f64, f64),
    side: usize,
    noise: f64,
    image: &mut [f32],
) -> (u32, u32, u32, Placement) {
    let class = (i % k) as u32;
    let cue1 = draw_cue(rng, class, k, rho.0);
    let cue2 = draw_cue(rng, class, k, rho.1);
    let s = side as f64;
    let radius = s * (RADIUS_MIN + RADIUS_SPAN * unit(rng));
    let cx = radius + (s - 2.0 * radius) * unit(rng);
    let cy = radius + (s - 2.0 * radius) * unit(rng);
    let angle = MAX_ANGLE * (2.0 * unit(rng) - 1.0);
    let phase = (
        super::ranking::uniform_below(rng, PHASES),
        super::ranking::uniform_below(rng, PHASES),
    );
    let placement = Placement {
        cx,
        cy,
        radius,
        angle,
        phase,
    };
    let shape = Shape::ALL[class as usize];
    let texture = Texture::ALL[cue2 as usize];
    let colour = PALETTE[cue1 as usize];
    let (sin, cos) = sin_cos(angle);
    let plane = side * side;
    // Var of a sum of 4 U(0,1) is 1/3: centred and scaled by sqrt(3) x noise it has sd noise.
    let scale = (noise * SQRT_3) as f32;
    const INV_2_16: f32 = 1.0 / 65_536.0;
    for y in 0..side {
        for x in 0..side {
            // The pixel's centre in the shape's frame: rotate by -angle, scale by 1/radius.
            let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
            let u = (cos * dx + sin * dy) / radius;
            let v = (cos * dy - sin * dx) / radius;
            let rgb = if shape.contains(u, v) {
                colour
            } else if texture.is_light(x, y, phase.0, phase.1, side) {
                [TEXTURE_HI; 3]
            } else {
                [TEXTURE_LO; 3]
            };
            for (ch, &value) in rgb.iter().enumerate() {
                let (a, b) = (rng.next_u32(), rng.next_u32());
                let sum =
                    (a >> 16) as f32 + (a & 0xffff) as f32 + (b >> 16) as f32 + (b & 0xffff) as f32;
                let e = (sum * INV_2_16 - 2.0) * scale;
                image[ch * plane + y * side + x] = (value + e).clamp(0.0, 1.0);
            }
        }
    }
    (class, cue1, cue2, placement)
}

/// Writes the three splits as one safetensors file (`--save-data`), so another framework can
/// check the lab on the same data: `{split}.images` F32 (N, 3, S, S) in [0, 1], and
/// `{split}.labels`, `{split}.cue1`, `{split}.cue2` I64 (N), for split in train, val, test.
/// The metadata holds the options (JSON) and how to read the cues.
pub fn save_safetensors(
    data: &SebraData,
    opts: &SebraOptions,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let widen = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<i64>>();
    let splits = [&data.train, &data.val, &data.test];
    let ints: Vec<[Vec<i64>; 3]> = splits
        .iter()
        .map(|s| [widen(&s.labels), widen(&s.cue1), widen(&s.cue2)])
        .collect();
    let mut tensors = Vec::new();
    for (split, [labels, cue1, cue2]) in splits.iter().zip(&ints) {
        let name = split.kind.name();
        let n = split.len();
        tensors.push(TypedTensor {
            name: format!("{name}.images"),
            shape: vec![n, CHANNELS, split.side, split.side],
            values: TensorValues::F32(&split.images),
        });
        for (field, values) in [("labels", labels), ("cue1", cue1), ("cue2", cue2)] {
            tensors.push(TypedTensor {
                name: format!("{name}.{field}"),
                shape: vec![n],
                values: TensorValues::I64(values),
            });
        }
    }
    let options = serde_json::to_string(opts)
        .map_err(|e| crate::LabError::invalid(format!("cannot encode the options as JSON: {e}")))?;
    let metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("layerlab.sebra.options".to_string(), options),
        (
            "layerlab.sebra.cues".to_string(),
            "cue1 = the shape's colour, cue2 = the background texture, each an index in [0, K); \
             a cue is aligned when it equals the label. Groups: 0 both aligned, 1 only cue1, \
             2 only cue2, 3 none. Pixels are in [0, 1], not normalised."
                .to_string(),
        ),
    ]);
    write_tensors(out, &tensors, &metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(
        classes: usize,
        image: usize,
        per_class: usize,
        bias: (f64, f64),
        noise: f64,
    ) -> SebraOptions {
        SebraOptions {
            classes,
            image,
            train_per_class: per_class,
            val_per_class: per_class,
            test_per_class: per_class,
            bias,
            noise,
            batch: 8,
            ..SebraOptions::default()
        }
    }

    /// |count - n p| within 5 standard deviations of Binomial(n, p) (a false alarm has odds
    /// below 1e-6 per check; the data are seeded, so the outcome is fixed anyway).
    fn binomial_ok(count: usize, n: usize, p: f64, what: &str) {
        let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
        assert!(
            (count as f64 - mean).abs() <= 5.0 * sd + 1e-9,
            "{what}: {count} of {n}, expected {mean:.1} +- {:.1}",
            5.0 * sd
        );
    }

    /// Counts groups and cue values against the ratios: the training split at (rho_1, rho_2),
    /// the balanced ones at 1/K; a conflicting cue takes each other value with 1/(K-1).
    fn check_counts(split: &Split, k: usize, rho: (f64, f64)) {
        let n = split.len();
        let p_group = [
            rho.0 * rho.1,
            rho.0 * (1.0 - rho.1),
            (1.0 - rho.0) * rho.1,
            (1.0 - rho.0) * (1.0 - rho.1),
        ];
        let groups = split.groups();
        for g in Group::ALL {
            let count = groups.iter().filter(|&&x| x == g).count();
            binomial_ok(
                count,
                n,
                p_group[g.order() as usize],
                &format!("{:?} {g:?}", split.kind),
            );
        }
        for c in 0..k as u32 {
            let members: Vec<usize> = (0..n).filter(|&i| split.labels[i] == c).collect();
            assert_eq!(members.len(), n / k, "classes are exactly balanced");
            for (cue, r) in [(&split.cue1, rho.0), (&split.cue2, rho.1)] {
                let conflicting: Vec<usize> =
                    members.iter().copied().filter(|&i| cue[i] != c).collect();
                binomial_ok(
                    members.len() - conflicting.len(),
                    members.len(),
                    r,
                    "aligned",
                );
                for v in (0..k as u32).filter(|&v| v != c) {
                    let count = conflicting.iter().filter(|&&i| cue[i] == v).count();
                    binomial_ok(
                        count,
                        conflicting.len(),
                        1.0 / (k - 1) as f64,
                        "other value",
                    );
                }
            }
        }
    }

    #[test]
    fn groups_follow_the_bias_ratios_in_training_and_are_balanced_elsewhere() {
        let opts = SebraOptions {
            image: 12,
            ..SebraOptions::default()
        };
        let data = generate(&opts).unwrap();
        check_counts(&data.train, 4, (0.95, 0.95));
        check_counts(&data.val, 4, (0.25, 0.25));
        check_counts(&data.test, 4, (0.25, 0.25));
        // Three classes, the colour always aligned and the texture unbiased.
        let opts = small(3, 12, 600, (1.0, 1.0 / 3.0), 0.05);
        let train = generate_split(&opts, SplitKind::Train);
        assert!(train.cue1.iter().zip(&train.labels).all(|(a, b)| a == b));
        check_counts(&train, 3, (1.0, 1.0 / 3.0));
    }

    /// Without noise, every pixel is either exactly the cue-1 colour (inside the shape) or
    /// one of the texture's greys: the colour's pixels lie within the drawn circumradius, add
    /// up per shape to its area formula x radius^2 (a randomly placed shape covers, on
    /// average, exactly its area in pixel centres), and the stripes run the right way.
    #[test]
    fn pixels_carry_the_colour_inside_the_shape_and_the_texture_outside() {
        let opts = small(8, 24, 100, (0.5, 0.5), 0.0);
        opts.check().unwrap();
        let split = generate_split(&opts, SplitKind::Train);
        let s = split.side;
        let mut drawn = [0f64; 8];
        let mut formula = [0f64; 8];
        for i in 0..split.len() {
            let img = split.image(i);
            let at = |ch: usize, x: usize, y: usize| img[ch * s * s + y * s + x];
            let colour = PALETTE[split.cue1[i] as usize];
            let pl = split.placements[i];
            let mut background = vec![None; s * s];
            for y in 0..s {
                for x in 0..s {
                    let rgb = [at(0, x, y), at(1, x, y), at(2, x, y)];
                    if rgb == colour {
                        drawn[split.labels[i] as usize] += 1.0;
                        let (dx, dy) = (x as f64 + 0.5 - pl.cx, y as f64 + 0.5 - pl.cy);
                        assert!((dx * dx + dy * dy).sqrt() <= pl.radius + 1e-9, "sample {i}");
                    } else {
                        assert!(
                            rgb == [TEXTURE_LO; 3] || rgb == [TEXTURE_HI; 3],
                            "sample {i} pixel ({x}, {y}) is {rgb:?}"
                        );
                        background[y * s + x] = Some(rgb[0]);
                    }
                }
            }
            let c = split.labels[i] as usize;
            formula[c] += Shape::ALL[c].unit_area() * pl.radius * pl.radius;
            // The texture: horizontal stripes are constant along rows and flip every two
            // rows; vertical ones the same along columns; plain is all dark.
            let bg = |x: usize, y: usize| background[y * s + x];
            for y in 0..s {
                for x in 0..s {
                    let Some(v) = bg(x, y) else { continue };
                    match Texture::ALL[split.cue2[i] as usize] {
                        Texture::StripesHorizontal => {
                            if let Some(w) = (0..s).find_map(|x2| bg(x2, y)) {
                                assert_eq!(v, w, "sample {i}: a row of one stripe");
                            }
                            if let Some(w) = bg(x, (y + 2) % s).filter(|_| y + 2 < s) {
                                assert_ne!(v, w, "sample {i}: stripes two rows apart");
                            }
                        }
                        Texture::StripesVertical => {
                            if let Some(w) = (0..s).find_map(|y2| bg(x, y2)) {
                                assert_eq!(v, w, "sample {i}: a column of one stripe");
                            }
                        }
                        Texture::Plain => assert_eq!(v, TEXTURE_LO),
                        _ => {}
                    }
                }
            }
        }
        for c in 0..8 {
            let rel = (drawn[c] - formula[c]).abs() / formula[c];
            assert!(
                rel < 0.03,
                "{:?}: {} pixels, formula {:.0}",
                Shape::ALL[c],
                drawn[c],
                formula[c]
            );
        }
    }

    /// The noise: the same seed with and without it draws the same scene (the noise comes
    /// last in each sample's stream); on the greys (far from the clamp) the difference has
    /// mean 0 and standard deviation `noise`.
    #[test]
    fn pixel_noise_has_the_asked_standard_deviation() {
        let clean = generate_split(&small(4, 16, 50, (0.9, 0.9), 0.0), SplitKind::Train);
        let noisy = generate_split(&small(4, 16, 50, (0.9, 0.9), 0.08), SplitKind::Train);
        assert_eq!(clean.labels, noisy.labels);
        assert_eq!(clean.cue2, noisy.cue2);
        assert_eq!(clean.placements, noisy.placements);
        let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
        for (a, b) in clean.images.iter().zip(&noisy.images) {
            if *a == TEXTURE_LO || *a == TEXTURE_HI {
                let d = f64::from(b - a);
                n += 1.0;
                sum += d;
                sq += d * d;
            }
        }
        let mean = sum / n;
        let sd = (sq / n - mean * mean).sqrt();
        assert!(n > 50_000.0);
        assert!(mean.abs() < 2e-3, "mean {mean}");
        assert!((sd - 0.08).abs() < 0.08 * 0.02, "sd {sd}");
    }

    #[test]
    fn a_seed_names_the_data() {
        let opts = small(2, 12, 16, (0.95, 0.95), 0.05);
        let a = generate_split(&opts, SplitKind::Val);
        let b = generate_split(&opts, SplitKind::Val);
        assert_eq!(a.images, b.images);
        let c = generate_split(
            &SebraOptions {
                seed: 1,
                ..opts.clone()
            },
            SplitKind::Val,
        );
        assert_ne!(a.images, c.images);
        let d = generate_split(&opts, SplitKind::Test);
        assert_ne!(a.images, d.images, "each split has its own streams");
    }

    /// The --save-data file read back by candle's safetensors loader.
    #[test]
    fn saved_splits_read_back_in_candle() {
        let opts = small(2, 12, 16, (0.95, 0.95), 0.05);
        let data = generate(&opts).unwrap();
        let mut bytes = Vec::new();
        save_safetensors(&data, &opts, &mut bytes).unwrap();
        let back =
            candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
        assert_eq!(back.len(), 12);
        for split in [&data.train, &data.val, &data.test] {
            let name = split.kind.name();
            let images = &back[&format!("{name}.images")];
            assert_eq!(images.dims(), &[split.len(), 3, 12, 12]);
            let flat: Vec<f32> = images.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(flat, split.images);
            for (field, values) in [
                ("labels", &split.labels),
                ("cue1", &split.cue1),
                ("cue2", &split.cue2),
            ] {
                let t = &back[&format!("{name}.{field}")];
                assert_eq!(t.dtype(), candle_core::DType::I64);
                let got: Vec<i64> = t.to_vec1().unwrap();
                assert_eq!(
                    got,
                    values.iter().map(|&v| i64::from(v)).collect::<Vec<_>>()
                );
            }
        }
        assert!(generate(&SebraOptions { classes: 9, ..opts }).is_err());
    }

    #[test]
    fn taylor_sine_and_cosine_match_libm_over_the_angle_range() {
        for i in 0..=100 {
            let x = MAX_ANGLE * (i as f64 / 50.0 - 1.0);
            let (s, c) = sin_cos(x);
            assert!((s - x.sin()).abs() < 1e-12, "sin({x})");
            assert!((c - x.cos()).abs() < 1e-12, "cos({x})");
        }
    }

    /// The rasteriser against each shape's area formula: the fraction of a fine grid over
    /// [-1, 1]^2 that `contains` accepts, times 4, is the area to within the grid's error.
    #[test]
    fn shapes_cover_their_formula_area_and_stay_in_the_unit_disc() {
        let n = 800;
        for shape in Shape::ALL {
            let mut inside = 0usize;
            for a in 0..n {
                for b in 0..n {
                    let u = (a as f64 + 0.5) / n as f64 * 2.0 - 1.0;
                    let v = (b as f64 + 0.5) / n as f64 * 2.0 - 1.0;
                    if shape.contains(u, v) {
                        inside += 1;
                        assert!(
                            u * u + v * v <= 1.0 + 1e-9,
                            "{shape:?} leaves the unit disc"
                        );
                    }
                }
            }
            let area = 4.0 * inside as f64 / (n * n) as f64;
            let rel = (area - shape.unit_area()).abs() / shape.unit_area();
            assert!(
                rel < 0.01,
                "{shape:?}: grid area {area}, formula {}",
                shape.unit_area()
            );
        }
    }
}
