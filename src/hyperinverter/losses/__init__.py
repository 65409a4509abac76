"""Training losses: LPIPS, identity (SFace / ArcFace), discriminator features."""
