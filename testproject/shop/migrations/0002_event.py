from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="Event",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False)),
                ("run", models.CharField(max_length=100)),
                ("source", models.CharField(max_length=20)),
                ("n", models.IntegerField(default=0)),
                ("pid", models.IntegerField()),
                ("session", models.BigIntegerField()),
            ],
        ),
    ]
