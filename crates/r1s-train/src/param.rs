//! A mutable view of one trainable parameter (a matrix or a vector), the unit the optimizer, the
//! checkpoints and the tests address by name.

use burn::module::Param;
use burn::tensor::{Device, Tensor};

/// A mutable view of one parameter, by rank.
#[derive(Debug)]
pub enum ParamMut<'a> {
    Matrix(&'a mut Param<Tensor<2>>),
    Vector(&'a mut Param<Tensor<1>>),
}

impl ParamMut<'_> {
    /// The value as a flat vector (plain device).
    pub fn flat(&self) -> Tensor<1> {
        match self {
            ParamMut::Matrix(p) => {
                let [a, b] = p.val().dims();
                p.val().inner().reshape([a * b])
            }
            ParamMut::Vector(p) => p.val().inner(),
        }
    }

    /// This parameter's gradient in `grads`, flat (plain device).
    pub fn grad(&self, grads: &burn::tensor::Gradients) -> Option<Tensor<1>> {
        match self {
            ParamMut::Matrix(p) => p.val().grad(grads).map(|g| {
                let [a, b] = g.dims();
                g.reshape([a * b])
            }),
            ParamMut::Vector(p) => p.val().grad(grads),
        }
    }

    /// Replaces the value with `flat` (plain), as a fresh trainable leaf on `device`.
    pub fn set(&mut self, flat: Tensor<1>, device: &Device) {
        match self {
            ParamMut::Matrix(p) => {
                let dims = p.val().dims();
                let t = flat.reshape(dims).to_device(device).autodiff().require_grad();
                **p = Param::initialized(p.id, t);
            }
            ParamMut::Vector(p) => {
                let t = flat.to_device(device).autodiff().require_grad();
                **p = Param::initialized(p.id, t);
            }
        }
    }

    pub fn numel(&self) -> usize {
        match self {
            ParamMut::Matrix(p) => p.val().dims().iter().product(),
            ParamMut::Vector(p) => p.val().dims()[0],
        }
    }
}
