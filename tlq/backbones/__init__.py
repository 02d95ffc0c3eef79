"""The built-in backbone providers: timm models by name (``resnet18``) and models trained by earlier jobs
(``job:ID``); each registers through the ``tlq.backbones`` entry point, as third parties do."""
